//! `weir bench`: measurements, never tests.
pub fn component_vs_native(_component: Option<std::path::PathBuf>, _records: usize, _batch: usize) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
