//! Regenerate `data/examples/waltz/` (see `stylebridge::data::example_song`).
use stylebridge::data::example_song;

fn main() -> anyhow::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/examples").join(example_song::NAME);
    example_song::write(&dir)?;
    println!("wrote {}", dir.display());
    Ok(())
}
