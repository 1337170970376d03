//! Writes the harnesses' valid seed inputs into `corpus/<target>/`, to start a fuzzing run from
//! well-formed frames instead of nothing: `cargo run --bin write_seeds` (in `fuzz/`).

use std::fs;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let sets = [
        ("frame_decode", warren_amqp_fuzz::frame_decode_seeds()),
        ("method_decode", warren_amqp_fuzz::method_decode_seeds()),
        ("content_assembler", warren_amqp_fuzz::content_assembler_seeds()),
        ("field_table", warren_amqp_fuzz::field_table_seeds()),
    ];
    for (target, seeds) in sets {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        for (i, seed) in seeds.iter().enumerate() {
            fs::write(dir.join(format!("seed-{i:03}")), seed)?;
        }
        println!("{}: {} seeds", dir.display(), seeds.len());
    }
    Ok(())
}
