//! Whole-file durable replace, for the small files the broker rewrites
//! (meta.properties, the metadata snapshot): write a temp file, fsync it,
//! rename it over the old one, fsync the directory. A crash at any point
//! leaves either the old file or the new one, never a mix.

use std::io::Write;
use std::path::Path;

pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}
