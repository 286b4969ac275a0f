//! The on-disk cubin cache: a second session (or process) that generates the same kernel source
//! for the same architecture and NVRTC loads the cubin instead of compiling it again.
//!
//! Where: `set_dir` (the EP's `cache_dir` option), else `$QUILT_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/quilt/kernels`, else `$HOME/.cache/quilt/kernels`; an empty directory name turns
//! the disk cache off. One file per (source, arch, NVRTC version), named by a hash of the three.
//! Each file stores the full source and is used only when that source matches exactly, so a hash
//! collision or a torn or foreign file costs a recompile, never a wrong kernel. Files are written
//! to a temporary name and renamed into place, so concurrent processes never see half a file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use super::nvrtc::Compiled;

const MAGIC: &[u8] = b"quilt-cubin-v1\n";

/// The directory chosen with `set_dir`; `None` inside: not chosen (use the environment).
fn chosen() -> &'static Mutex<Option<Option<PathBuf>>> {
    static DIR: OnceLock<Mutex<Option<Option<PathBuf>>>> = OnceLock::new();
    DIR.get_or_init(|| Mutex::new(None))
}

/// Sets the cache directory for this process (`None`: no disk cache). Overrides the environment.
pub fn set_dir(dir: Option<PathBuf>) {
    *chosen().lock().unwrap_or_else(|p| p.into_inner()) = Some(dir.filter(|d| !d.as_os_str().is_empty()));
}

/// The cache directory in use, if any.
pub fn dir() -> Option<PathBuf> {
    if let Some(d) = chosen().lock().unwrap_or_else(|p| p.into_inner()).clone() {
        return d;
    }
    let env = |k: &str| std::env::var_os(k);
    if let Some(d) = env("QUILT_CACHE_DIR") {
        return Some(PathBuf::from(d)).filter(|d| !d.as_os_str().is_empty());
    }
    if let Some(d) = env("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("quilt/kernels"));
    }
    env("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".cache/quilt/kernels"))
}

static HITS: AtomicUsize = AtomicUsize::new(0);
static WRITES: AtomicUsize = AtomicUsize::new(0);

/// (cubins loaded from disk, cubins written) in this process.
pub fn stats() -> (usize, usize) {
    (HITS.load(Ordering::Relaxed), WRITES.load(Ordering::Relaxed))
}

/// FNV-1a, 64 bits: stable across Rust versions and processes (std's hasher is not promised to be).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn file_name(source: &str, arch: (i32, i32), nvrtc: (i32, i32)) -> String {
    let tag = format!("sm_{}{}-nvrtc{}.{}", arch.0, arch.1, nvrtc.0, nvrtc.1);
    format!("{:016x}-{tag}.cubin", fnv1a(&[source.as_bytes(), tag.as_bytes()]))
}

fn encode(source: &str, c: &Compiled) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 24 + source.len() + c.log.len() + c.cubin.len());
    out.extend_from_slice(MAGIC);
    for part in [source.as_bytes(), c.log.as_bytes(), &c.cubin] {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn decode(bytes: &[u8], source: &str) -> Option<Compiled> {
    let mut rest = bytes.strip_prefix(MAGIC)?;
    let mut next = || -> Option<&[u8]> {
        let (len, tail) = rest.split_first_chunk::<8>()?;
        let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
        let (part, tail) = (tail.get(..len)?, tail.get(len..)?);
        rest = tail;
        Some(part)
    };
    let (stored, log, cubin) = (next()?, next()?, next()?);
    (stored == source.as_bytes() && !cubin.is_empty()).then(|| Compiled { cubin: cubin.to_vec(), log: String::from_utf8_lossy(log).into_owned() })
}

/// The cached cubin of `source` for `arch` built by NVRTC `nvrtc`, if the cache has a valid one.
pub fn load(source: &str, arch: (i32, i32), nvrtc: (i32, i32)) -> Option<Compiled> {
    let path = dir()?.join(file_name(source, arch, nvrtc));
    let found = decode(&std::fs::read(path).ok()?, source)?;
    HITS.fetch_add(1, Ordering::Relaxed);
    Some(found)
}

/// Stores a compile result. Failures are ignored: the cache only ever saves time.
pub fn store(source: &str, arch: (i32, i32), nvrtc: (i32, i32), compiled: &Compiled) {
    let Some(dir) = dir() else { return };
    if write_atomically(&dir, &file_name(source, arch, nvrtc), &encode(source, compiled)).is_ok() {
        WRITES.fetch_add(1, Ordering::Relaxed);
    }
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_reject_other_sources() {
        let c = Compiled { cubin: vec![1, 2, 3, 250], log: "ptxas info: 8 registers".into() };
        let bytes = encode("extern \"C\" __global__ void k() {}", &c);
        let back = decode(&bytes, "extern \"C\" __global__ void k() {}").unwrap();
        assert_eq!((back.cubin, back.log), (c.cubin.clone(), c.log.clone()));
        assert!(decode(&bytes, "extern \"C\" __global__ void j() {}").is_none(), "another source must miss");
        assert!(decode(&bytes[..bytes.len() - 1], "extern \"C\" __global__ void k() {}").is_none(), "a torn file must miss");
        assert!(decode(b"garbage", "x").is_none());
        assert_ne!(file_name("a", (9, 0), (13, 0)), file_name("a", (8, 9), (13, 0)));
        assert_ne!(file_name("a", (9, 0), (13, 0)), file_name("a", (9, 0), (13, 1)));
        assert_eq!(fnv1a(&[b"abc"]), fnv1a(&[b"abc"]));
    }
}
