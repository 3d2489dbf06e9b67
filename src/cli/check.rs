//! `sluice check-config`: validate the config file and load every plugin (compile,
//! type-check, `init` with each job's config) without side effects (the compile cache is
//! only read).

use std::process::ExitCode;

use super::Ctx;
use crate::host::job::prepare_handler;
use crate::host::register::load_plugins;
use crate::runtime::Runtime;
use crate::store::Keys;

pub fn check_config(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let config = &ctx.config;
    println!("config {}: ok", ctx.config_path.display());
    let runtime = Runtime::with_cache(Some(&config.host.data_dir.join("cache")), false)?;
    let (plugins, errors) = load_plugins(&runtime, config);
    let mut ok = errors.is_empty();
    for e in &errors {
        println!("error: {e:#}");
    }
    for p in &config.plugins {
        if let Some(plugin) = plugins.get(&p.name) {
            println!(
                "plugin {}: ok ({}, {} bytes, sha256 {})",
                p.name,
                p.path.display(),
                plugin.size,
                &plugin.sha256[..16]
            );
        }
    }
    // Plugins of [plugins] dir that jobs use, checked like the file's own.
    let mut dir_plugins = std::collections::HashMap::new();
    if let Some(dir) = &config.plugins_dir.dir {
        for job in &config.jobs {
            let path = dir.join(format!("{}.wasm", job.plugin));
            if !plugins.contains_key(&job.plugin) && path.is_file() {
                match runtime.load_file(&job.plugin, &path) {
                    Ok(p) => {
                        println!(
                            "plugin {}: ok ({}, from [plugins] dir)",
                            job.plugin,
                            path.display()
                        );
                        dir_plugins.insert(job.plugin.clone(), p);
                    }
                    Err(e) => {
                        println!("error: {e:#}");
                        ok = false;
                    }
                }
            }
        }
    }
    for job in &config.jobs {
        // A scan root missing here is not an error (hosts count it unreadable until it is
        // mounted), but it is worth saying.
        if let Ok(crate::model::Source::Scan(root)) = job.source()
            && !std::path::Path::new(root).is_dir()
        {
            println!(
                "job {}: warning: scan root {root} is not a directory on this machine (hosts \
                 where it is missing count it unreadable, and walk nothing)",
                job.name
            );
        }
        let configured = config.plugins.iter().any(|p| p.name == job.plugin);
        let Some(plugin) = plugins.get(&job.plugin).or(dir_plugins.get(&job.plugin)) else {
            if configured {
                println!(
                    "job {}: cannot run, plugin `{}` did not load",
                    job.name, job.plugin
                );
                ok = false;
            } else {
                println!(
                    "job {}: plugin `{}` is neither a [[plugin]] here nor in [plugins] dir: hosts \
                     run the job once it is loaded into the registry (sluice plugin load PATH \
                     --name {}); not checked here",
                    job.name, job.plugin, job.plugin
                );
            }
            continue;
        };
        match prepare_handler(plugin.clone(), job, &config.host.prefix, None) {
            Ok(_) => println!(
                "job {}: ok ({}, read from stream {} → plugin {}, init accepted the config)",
                job.name,
                job.source,
                Keys::new(&config.host.prefix).source_stream(job),
                job.plugin
            ),
            Err(e) => {
                println!("error: {e:#}");
                ok = false;
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
