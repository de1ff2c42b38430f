//! Turns a managed model's configuration into a `LaunchSpec`: a shell
//! `command`, or `batchd engine` for a GGUF file. Both go through the same
//! process management.

use std::path::Path;
use std::time::Duration;

use super::process::{LaunchSpec, parse_signal};
use crate::config::ModelConfig;

/// `None` for a model served at a fixed `url` (not managed).
pub fn launch_spec(model: &ModelConfig, engine_exe: &Path, log_dir: &Path) -> Option<LaunchSpec> {
    let (program, args) = match (&model.command, &model.engine) {
        (Some(command), _) => ("sh".into(), vec!["-c".into(), command.into()]),
        (None, Some(gguf)) => {
            let mut args: Vec<std::ffi::OsString> = vec![
                "engine".into(),
                "--model".into(),
                gguf.into(),
                "--name".into(),
                model.name.clone().into(),
                "--listen".into(),
                "127.0.0.1:{port}".into(),
                "--parallel".into(),
                model.engine_parallel.to_string().into(),
                "--ctx-per-seq".into(),
                model.engine_ctx_per_seq.to_string().into(),
            ];
            if let Some(threads) = model.engine_threads {
                args.extend(["--threads".into(), threads.to_string().into()]);
            }
            (engine_exe.to_owned(), args)
        }
        (None, None) => return None,
    };
    Some(LaunchSpec {
        model: model.name.clone(),
        program,
        args,
        env: model.env.clone(),
        health_path: model.health_path.clone(),
        start_timeout: Duration::from_secs(model.start_timeout_secs),
        stop_signal: parse_signal(&model.stop_signal).expect("checked when the config was loaded"),
        stop_command: model.stop_command.clone(),
        stop_grace: Duration::from_secs(model.stop_grace_secs),
        log_path: log_dir.join(format!("{}.log", file_safe(&model.name))),
    })
}

fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
