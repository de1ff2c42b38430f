//! Writes a tiny but complete GGUF model: llama architecture, random weights,
//! a real SentencePiece-style vocabulary with byte fallback, and a chat
//! template. A few hundred kilobytes, loaded by llama.cpp through exactly the
//! code a real model goes through, so engine tests need no download.

use std::io::{self, Write};
use std::path::Path;

/// Shape of the generated model.
#[derive(Debug, Clone)]
pub struct TinyModel {
    pub n_embd: u64,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_ff: u64,
    pub n_layer: u32,
    pub context_length: u32,
    pub seed: u64,
}

impl Default for TinyModel {
    fn default() -> Self {
        Self {
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 128,
            n_layer: 2,
            context_length: 1024,
            seed: 42,
        }
    }
}

/// ChatML, written with the `bos_token` the way Hugging Face templates do.
pub const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const BYTE: i32 = 6;

/// Tokens: `<unk>`, `<s>`, `</s>`, the chat markers, 256 byte tokens, then
/// word pieces so common text does not fall back to bytes.
fn vocabulary() -> Vec<(String, f32, i32)> {
    let mut v = vec![
        ("<unk>".to_owned(), 0.0, UNKNOWN),
        ("<s>".to_owned(), 0.0, CONTROL),
        ("</s>".to_owned(), 0.0, CONTROL),
        ("<|im_start|>".to_owned(), 0.0, CONTROL),
        ("<|im_end|>".to_owned(), 0.0, CONTROL),
    ];
    for b in 0..=255u8 {
        v.push((format!("<0x{b:02X}>"), 0.0, BYTE));
    }
    let pieces = [
        "▁",
        "▁the",
        "▁a",
        "▁is",
        "▁of",
        "▁and",
        "▁to",
        "▁in",
        "▁hello",
        "▁world",
        "▁say",
        "▁one",
        "▁two",
        "▁three",
        "e",
        "t",
        "a",
        "o",
        "i",
        "n",
        "s",
        "r",
        "h",
        "l",
        "d",
        "\n",
        "user",
        "assistant",
        "system",
    ];
    for (i, p) in pieces.iter().enumerate() {
        v.push(((*p).to_owned(), -(i as f32) - 1.0, NORMAL));
    }
    v
}

struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    fn u32(&mut self, v: u32) -> io::Result<()> {
        self.out.write_all(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> io::Result<()> {
        self.out.write_all(&v.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> io::Result<()> {
        self.u64(s.len() as u64)?;
        self.out.write_all(s.as_bytes())
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> io::Result<()> {
        self.str(key)?;
        self.u32(4)?;
        self.u32(v)
    }
    fn kv_f32(&mut self, key: &str, v: f32) -> io::Result<()> {
        self.str(key)?;
        self.u32(6)?;
        self.out.write_all(&v.to_le_bytes())
    }
    fn kv_bool(&mut self, key: &str, v: bool) -> io::Result<()> {
        self.str(key)?;
        self.u32(7)?;
        self.out.write_all(&[u8::from(v)])
    }
    fn kv_str(&mut self, key: &str, v: &str) -> io::Result<()> {
        self.str(key)?;
        self.u32(8)?;
        self.str(v)
    }
    fn kv_array_header(&mut self, key: &str, elem_type: u32, len: usize) -> io::Result<()> {
        self.str(key)?;
        self.u32(9)?;
        self.u32(elem_type)?;
        self.u64(len as u64)
    }
}

/// Writes the model to `path`.
pub fn write(path: &Path, m: &TinyModel) -> io::Result<()> {
    let vocab = vocabulary();
    let n_vocab = vocab.len() as u64;
    let head_dim = m.n_embd / u64::from(m.n_head);
    let n_embd_kv = head_dim * u64::from(m.n_head_kv);
    // (name, dims): GGUF lists the fastest-varying dimension first.
    let mut tensors: Vec<(String, Vec<u64>)> = vec![
        ("token_embd.weight".into(), vec![m.n_embd, n_vocab]),
        ("output_norm.weight".into(), vec![m.n_embd]),
        ("output.weight".into(), vec![m.n_embd, n_vocab]),
    ];
    for l in 0..m.n_layer {
        let t = |n: &str| format!("blk.{l}.{n}.weight");
        tensors.extend([
            (t("attn_norm"), vec![m.n_embd]),
            (t("attn_q"), vec![m.n_embd, m.n_embd]),
            (t("attn_k"), vec![m.n_embd, n_embd_kv]),
            (t("attn_v"), vec![m.n_embd, n_embd_kv]),
            (t("attn_output"), vec![m.n_embd, m.n_embd]),
            (t("ffn_norm"), vec![m.n_embd]),
            (t("ffn_gate"), vec![m.n_embd, m.n_ff]),
            (t("ffn_up"), vec![m.n_embd, m.n_ff]),
            (t("ffn_down"), vec![m.n_ff, m.n_embd]),
        ]);
    }
    const ALIGN: u64 = 32;
    let mut file = io::BufWriter::new(std::fs::File::create(path)?);
    let mut w = Writer { out: &mut file };
    w.out.write_all(b"GGUF")?;
    w.u32(3)?;
    w.u64(tensors.len() as u64)?;
    w.u64(20)?; // number of key-value pairs below
    w.kv_str("general.architecture", "llama")?;
    w.kv_str("general.name", "batchd tiny test model")?;
    w.kv_u32("llama.context_length", m.context_length)?;
    w.kv_u32("llama.embedding_length", m.n_embd as u32)?;
    w.kv_u32("llama.block_count", m.n_layer)?;
    w.kv_u32("llama.feed_forward_length", m.n_ff as u32)?;
    w.kv_u32("llama.attention.head_count", m.n_head)?;
    w.kv_u32("llama.attention.head_count_kv", m.n_head_kv)?;
    w.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)?;
    w.kv_u32("llama.rope.dimension_count", head_dim as u32)?;
    w.kv_str("tokenizer.ggml.model", "llama")?;
    w.kv_array_header("tokenizer.ggml.tokens", 8, vocab.len())?;
    for (text, _, _) in &vocab {
        w.str(text)?;
    }
    w.kv_array_header("tokenizer.ggml.scores", 6, vocab.len())?;
    for (_, score, _) in &vocab {
        w.out.write_all(&score.to_le_bytes())?;
    }
    w.kv_array_header("tokenizer.ggml.token_type", 5, vocab.len())?;
    for (_, _, kind) in &vocab {
        w.out.write_all(&kind.to_le_bytes())?;
    }
    w.kv_u32("tokenizer.ggml.unknown_token_id", 0)?;
    w.kv_u32("tokenizer.ggml.bos_token_id", 1)?;
    w.kv_u32("tokenizer.ggml.eos_token_id", 2)?;
    w.kv_bool("tokenizer.ggml.add_bos_token", true)?;
    w.kv_bool("tokenizer.ggml.add_eos_token", false)?;
    w.kv_str("tokenizer.chat_template", CHAT_TEMPLATE)?;

    let mut offset = 0u64;
    let mut sizes = vec![];
    for (name, dims) in &tensors {
        w.str(name)?;
        w.u32(dims.len() as u32)?;
        for d in dims {
            w.u64(*d)?;
        }
        w.u32(0)?; // F32
        w.u64(offset)?;
        let size = dims.iter().product::<u64>() * 4;
        sizes.push(size);
        offset += size.div_ceil(ALIGN) * ALIGN;
    }
    file.flush()?;
    let pos = file.get_ref().metadata()?.len() + file.buffer().len() as u64;
    let pad = pos.div_ceil(ALIGN) * ALIGN - pos;
    file.write_all(&vec![0u8; pad as usize])?;
    let mut rng = fastrand::Rng::with_seed(m.seed);
    for ((name, _), size) in tensors.iter().zip(&sizes) {
        let count = size / 4;
        let is_norm = name.contains("norm");
        for _ in 0..count {
            // Norm weights near 1 keep activations sane; the rest small noise.
            let v: f32 = if is_norm { 1.0 } else { (rng.f32() - 0.5) * 0.2 };
            file.write_all(&v.to_le_bytes())?;
        }
        let padded = size.div_ceil(ALIGN) * ALIGN;
        file.write_all(&vec![0u8; (padded - size) as usize])?;
    }
    file.flush()
}
