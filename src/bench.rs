//! `sluice bench`: placeholder replaced below.
use clap::Args;
#[derive(Debug, Args)]
pub struct BenchArgs {}
pub async fn run(_args: &BenchArgs, _url: Option<String>) -> anyhow::Result<()> {
    Ok(())
}
