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
    for job in &config.jobs {
        let Some(plugin) = plugins.get(&job.plugin) else {
            println!(
                "job {}: cannot run, plugin `{}` did not load",
                job.name, job.plugin
            );
            ok = false;
            continue;
        };
        match prepare_handler(plugin.clone(), job, &config.host.prefix, None) {
            Ok(_) => println!(
                "job {}: ok (stream {} → plugin {}, init accepted the config)",
                job.name,
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
