//! Chat templates: the GGUF's own Jinja template rendered with minijinja (the
//! same language Hugging Face uses), or a named fallback when the file has none.

use minijinja::{Environment, context};
use serde::Serialize;

/// Gemma's turn format, for Gemma files that carry no template (base models).
const GEMMA: &str = "{{ bos_token }}{% for message in messages %}{% if message.role == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message.role %}{% endif %}<start_of_turn>{{ role }}\n{{ message.content | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

/// ChatML, the most common format, for every other file without a template.
const CHATML: &str = "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    pub source: &'static str,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// `template` is the GGUF's `tokenizer.chat_template`, if any.
    pub fn new(
        template: Option<String>,
        architecture: &str,
        bos_token: String,
        eos_token: String,
    ) -> anyhow::Result<Self> {
        let (text, source) = match template {
            Some(t) => (t, "gguf"),
            None if architecture.starts_with("gemma") => (GEMMA.to_owned(), "gemma (fallback)"),
            None => (CHATML.to_owned(), "chatml (fallback)"),
        };
        let mut env = Environment::new();
        // Hugging Face templates call Python string methods (.strip(), .split()).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", text)?;
        Ok(Self {
            env,
            source,
            bos_token,
            eos_token,
        })
    }

    /// The prompt text for `messages`, ending with the assistant's turn opener.
    pub fn render(&self, messages: &[Message]) -> Result<String, String> {
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => minijinja::value::Serde(messages),
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| format!("the chat template failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<Message> {
        vec![
            Message {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            Message {
                role: "user".into(),
                content: " Hi ".into(),
            },
        ]
    }

    #[test]
    fn gemma_fallback_renders_turns() {
        let t = ChatTemplate::new(None, "gemma3", "<bos>".into(), "<eos>".into()).unwrap();
        let text = t.render(&msgs()).unwrap();
        assert_eq!(
            text,
            "<bos><start_of_turn>system\nBe brief.<end_of_turn>\n<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn gguf_templates_with_python_methods_render() {
        let hf = "{% for m in messages %}[{{ m.role.upper() }}]{{ m.content.strip() }}{% endfor %}{% if add_generation_prompt %}>{% endif %}";
        let t = ChatTemplate::new(Some(hf.into()), "llama", "<s>".into(), "</s>".into()).unwrap();
        assert_eq!(t.render(&msgs()).unwrap(), "[SYSTEM]Be brief.[USER]Hi>");
        let bad = ChatTemplate::new(
            Some("{{ raise_exception('no system') }}".into()),
            "llama",
            "".into(),
            "".into(),
        )
        .unwrap();
        assert!(bad.render(&msgs()).unwrap_err().contains("no system"));
    }
}
