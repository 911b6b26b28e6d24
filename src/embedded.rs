//! placeholder until the embedded module lands
use std::path::Path;
pub struct Cluster;
impl Cluster {
    pub async fn start(_dir: &Path) -> anyhow::Result<Cluster> { anyhow::bail!("embedded mode not yet built") }
    pub async fn start_ephemeral() -> anyhow::Result<Cluster> { anyhow::bail!("embedded mode not yet built") }
    pub fn url(&self, _db: &str) -> String { String::new() }
    pub async fn stop(self) -> anyhow::Result<()> { Ok(()) }
}
