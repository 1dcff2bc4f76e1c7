//! Writing a topology's tables to files for inspection (`ssi-dp acpi --out DIR`): one binary
//! table per file, named as acpixtract names them, so `iasl -d *.dat` disassembles the set.

use std::path::{Path, PathBuf};

use super::image::{PlaceError, Placement};
use super::platform::Platform;
use super::tables_for;
use super::topology::Topology;

/// The files written, in order, with the signature each holds.
pub const FILES: [(&str, &[u8; 4]); 8] = [
    ("rsdp.dat", b"RSD "),
    ("xsdt.dat", b"XSDT"),
    ("facp.dat", b"FACP"),
    ("dsdt.dat", b"DSDT"),
    ("apic.dat", b"APIC"),
    ("srat.dat", b"SRAT"),
    ("slit.dat", b"SLIT"),
    ("hmat.dat", b"HMAT"),
];

/// Why the tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The tables could not be linked at the requested placement.
    #[error(transparent)]
    Place(#[from] PlaceError),
    /// Creating the directory or writing a file failed.
    #[error("cannot write {path}: {source}; check that the directory is writable")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes the tables of `topology` (default platform, linked for [`Placement::BIOS_AREA`]) into
/// `out_dir`, creating it if needed, and returns the paths written.
pub fn dump(topology: &Topology, out_dir: &Path) -> Result<Vec<PathBuf>, DumpError> {
    dump_with(
        topology,
        &Platform::default(),
        Placement::BIOS_AREA,
        out_dir,
    )
}

/// [`dump`] with an explicit platform and placement.
pub fn dump_with(
    topology: &Topology,
    platform: &Platform,
    placement: Placement,
    out_dir: &Path,
) -> Result<Vec<PathBuf>, DumpError> {
    let image = tables_for(topology, platform).image(placement)?;
    std::fs::create_dir_all(out_dir).map_err(|source| DumpError::Io {
        path: out_dir.to_owned(),
        source,
    })?;
    let mut written = Vec::with_capacity(FILES.len());
    for (name, signature) in FILES {
        let path = out_dir.join(name);
        // Every signature in FILES is in the image.
        let bytes = image.table(signature).unwrap_or_default();
        std::fs::write(&path, bytes).map_err(|source| DumpError::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}
