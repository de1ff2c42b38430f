//! Turns a managed model's configuration into one `LaunchSpec` per place
//! (replica): a shell `command`, or `batchd engine` for a GGUF file, with
//! `{device}` filled in. Both go through the same process management.

use std::path::Path;
use std::time::Duration;

use super::process::LaunchSpec;
use crate::config::{ModelConfig, parse_signal};

/// One spec per place of a managed model (`ModelConfig::replica_devices`),
/// with `{device}` in the arguments and in `env` values replaced by the
/// place's device; empty for a model served at fixed URLs.
pub fn launch_specs(model: &ModelConfig, engine_exe: &Path, log_dir: &Path) -> Vec<LaunchSpec> {
    let Some(base) = launch_spec(model, engine_exe, log_dir) else {
        return vec![];
    };
    let places = model.replica_devices();
    let several = places.len() > 1;
    places
        .into_iter()
        .enumerate()
        .map(|(i, device)| {
            let fill = |text: &str| match &device {
                Some(device) => text.replace("{device}", device),
                None => text.to_owned(),
            };
            let mut spec = base.clone();
            spec.args = base.args.iter().map(|a| fill(&a.to_string_lossy()).into()).collect();
            spec.env = base.env.iter().map(|(k, v)| (k.clone(), fill(v))).collect();
            if let Some(stop) = &base.stop_command {
                spec.stop_command = Some(fill(stop));
            }
            if several {
                let tag = device.clone().unwrap_or_else(|| i.to_string());
                spec.log_path = log_dir.join(format!("{}@{}.log", file_safe(&model.name), file_safe(&tag)));
            }
            spec.device = device;
            spec
        })
        .collect()
}

fn launch_spec(model: &ModelConfig, engine_exe: &Path, log_dir: &Path) -> Option<LaunchSpec> {
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
        device: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_gets_its_own_command_env_and_log() {
        let mut model = ModelConfig::command("m", "serve --port {port} --gpu {device}");
        model.devices = vec!["0".into(), "3".into()];
        model.env.insert("CUDA_VISIBLE_DEVICES".into(), "{device}".into());
        let specs = launch_specs(&model, Path::new("batchd"), Path::new("/logs"));
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[1].args[1].to_string_lossy(), "serve --port {port} --gpu 3");
        assert_eq!(specs[1].env["CUDA_VISIBLE_DEVICES"], "3");
        assert_eq!(specs[0].device.as_deref(), Some("0"));
        assert_ne!(specs[0].log_path, specs[1].log_path);
        assert!(
            launch_specs(
                &ModelConfig::remote("r", "http://x/v1"),
                Path::new("b"),
                Path::new("/l")
            )
            .is_empty()
        );
    }
}
