//! The filesystem side of a `scan:PATH` job: one directory (or a batch of one directory's
//! files) looked at, as plain values for the store to compare with the job's change cache.
//! Knows nothing about Redis, wasmtime or the host: it reads the disk, never writes it.
//!
//! Paths are bytes (Unix file names need not be UTF-8), relative to the root, `/`-joined;
//! the root itself is the empty path.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use crate::model::{FileType, ScanOptions, scan_regex};

/// How deep a walk that follows links goes: a link to an ancestor would loop forever.
pub const MAX_DEPTH: u32 = 256;

/// A job's walker: its root, excludes and choices, ready to look at directories.
#[derive(Debug, Clone)]
pub struct Walker {
    root: PathBuf,
    follow_links: bool,
    excluded_types: HashSet<FileType>,
    exclude_files: Option<regex::bytes::Regex>,
    exclude_dirs: Option<regex::bytes::Regex>,
    files_per_task: usize,
}

/// One entry of a directory that is not a directory (a file, link, socket, …), stat'd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: FileType,
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub mode: u32,
    pub inode: u64,
    /// A symbolic link's target (when links are not followed).
    pub target: Option<Vec<u8>>,
}

impl Entry {
    /// What the change cache keeps of it: type, size, mtime and ctime; a change of any is
    /// a change.
    pub fn signature(&self) -> String {
        let t = match self.kind {
            FileType::File => 'f',
            FileType::Link => 'l',
            FileType::Socket => 's',
            FileType::Fifo => 'p',
            FileType::Block => 'b',
            FileType::Char => 'c',
            // Never an entry (directories are walked), but a signature all the same.
            FileType::Dir => 'd',
        };
        format!("{t}:{}:{}:{}", self.size, self.mtime_ns, self.ctime_ns)
    }

    /// The event's fields after `path` (`type`, `size`, `mtime`, `ctime` in seconds with
    /// nanoseconds, `mode` in octal, `inode`, and `target` for a link).
    pub fn fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        let secs = |ns: i128| {
            let (s, n) = (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000));
            format!("{s}.{n:09}").into_bytes()
        };
        let mut fields = vec![
            ("type", self.kind.as_str().as_bytes().to_vec()),
            ("size", self.size.to_string().into_bytes()),
            ("mtime", secs(self.mtime_ns)),
            ("ctime", secs(self.ctime_ns)),
            ("mode", format!("{:o}", self.mode).into_bytes()),
            ("inode", self.inode.to_string().into_bytes()),
        ];
        if let Some(target) = &self.target {
            fields.push(("target", target.clone()));
        }
        fields
    }
}

/// What looking at a directory found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Entries stat'd here (all of them when there are at most `files_per_task`).
    pub files: Vec<Entry>,
    /// Names of the files left to batch tasks, in batches of `files_per_task`.
    pub batches: Vec<Vec<Vec<u8>>>,
    /// Subdirectories to walk.
    pub dirs: Vec<Vec<u8>>,
    /// Names present but excluded (still present: not deleted).
    pub excluded: Vec<Vec<u8>>,
    /// Entries that could not be stat'd (present, not compared).
    pub unreadable: Vec<Vec<u8>>,
}

/// A directory looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Looked {
    Listed(Listing),
    /// It is not there (any more): everything the cache has under it is gone.
    Gone,
    /// It could not be read (permissions, I/O): nothing is concluded about what is in it.
    Unreadable(String),
}

impl Walker {
    pub fn new(root: &str, options: &ScanOptions) -> Result<Walker, String> {
        let regex = |p: &Option<String>| -> Result<Option<regex::bytes::Regex>, String> {
            p.as_deref()
                .map(|p| {
                    scan_regex(p)?;
                    regex::bytes::RegexBuilder::new(p)
                        .size_limit(1 << 20)
                        .build()
                        .map_err(|e| e.to_string())
                })
                .transpose()
        };
        Ok(Walker {
            root: PathBuf::from(root),
            follow_links: options.follow_links,
            excluded_types: options.exclude_types.iter().copied().collect(),
            exclude_files: regex(&options.exclude_files)?,
            exclude_dirs: regex(&options.exclude_dirs)?,
            files_per_task: options.files_per_task.max(1),
        })
    }

    /// `dir` (relative) on disk.
    fn path(&self, dir: &[u8]) -> PathBuf {
        if dir.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(dir))
        }
    }

    /// Look at directory `dir` at `depth`: its subdirectories, and its files (stat'd here
    /// when they are few, else split into batches for other tasks).
    pub fn look(&self, dir: &[u8], depth: u32) -> Looked {
        let path = self.path(dir);
        let read = match std::fs::read_dir(&path) {
            Ok(read) => read,
            // Gone, or no longer a directory (replaced by a file): what was under it went.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                return if dir.is_empty() {
                    // The root missing is a mount gone, not a tree deleted.
                    Looked::Unreadable(format!("{}: {e}", path.display()))
                } else {
                    Looked::Gone
                };
            }
            Err(e) => return Looked::Unreadable(format!("{}: {e}", path.display())),
        };
        let mut listing = Listing::default();
        let mut names = Vec::new();
        // Following links, the real directories this one is under (itself included): a link
        // back to one of them is a loop, not a directory to walk again.
        let above = self.follow_links.then(|| self.real_chain(dir));
        for entry in read {
            let entry = match entry {
                Ok(entry) => entry,
                Err(_) => continue,
            };
            let name = entry.file_name().as_bytes().to_vec();
            let kind = match entry.file_type() {
                Ok(t) => type_of(&t),
                Err(_) => {
                    listing.unreadable.push(name);
                    continue;
                }
            };
            // A link is a directory to walk only when links are followed and it leads to one.
            let is_dir = kind == FileType::Dir
                || (kind == FileType::Link
                    && self.follow_links
                    && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()));
            if is_dir {
                let looped = kind == FileType::Link
                    && above.as_ref().is_some_and(|above| {
                        std::fs::canonicalize(entry.path()).is_ok_and(|real| above.contains(&real))
                    });
                let excluded = looped
                    || self.excluded_types.contains(&FileType::Dir)
                    || self
                        .exclude_dirs
                        .as_ref()
                        .is_some_and(|r| r.is_match(&name))
                    || depth + 1 > MAX_DEPTH;
                if excluded {
                    listing.excluded.push(name);
                } else {
                    listing.dirs.push(name);
                }
                continue;
            }
            let shown = if kind == FileType::Link && self.follow_links {
                FileType::File
            } else {
                kind
            };
            if self.excluded_types.contains(&shown)
                || self
                    .exclude_files
                    .as_ref()
                    .is_some_and(|r| r.is_match(&name))
            {
                listing.excluded.push(name);
                continue;
            }
            names.push(name);
        }
        if names.len() <= self.files_per_task {
            let (files, unreadable) = self.stat(dir, names);
            listing.files = files;
            listing.unreadable.extend(unreadable);
        } else {
            listing.batches = names
                .chunks(self.files_per_task)
                .map(<[Vec<u8>]>::to_vec)
                .collect();
        }
        Looked::Listed(listing)
    }

    /// The real paths of the root and of each directory from it down to `dir` (links
    /// resolved).
    fn real_chain(&self, dir: &[u8]) -> HashSet<PathBuf> {
        let mut chain = HashSet::new();
        let mut at = self.root.clone();
        chain.extend(std::fs::canonicalize(&at));
        for part in dir.split(|b| *b == b'/').filter(|p| !p.is_empty()) {
            at.push(OsStr::from_bytes(part));
            chain.extend(std::fs::canonicalize(&at));
        }
        chain
    }

    /// Stat files `names` of directory `dir`: the entries, and the names that could not be
    /// stat'd (gone since they were listed, or unreadable).
    pub fn stat(&self, dir: &[u8], names: Vec<Vec<u8>>) -> (Vec<Entry>, Vec<Vec<u8>>) {
        let base = self.path(dir);
        let mut files = Vec::with_capacity(names.len());
        let mut unreadable = Vec::new();
        for name in names {
            let path = base.join(OsStr::from_bytes(&name));
            match self.entry(&path, name.clone()) {
                Some(entry) => files.push(entry),
                None => unreadable.push(name),
            }
        }
        (files, unreadable)
    }

    fn entry(&self, path: &Path, name: Vec<u8>) -> Option<Entry> {
        let meta = if self.follow_links {
            std::fs::metadata(path).or_else(|_| std::fs::symlink_metadata(path))
        } else {
            std::fs::symlink_metadata(path)
        }
        .ok()?;
        let kind = type_of(&meta.file_type());
        let target = (kind == FileType::Link)
            .then(|| std::fs::read_link(path).ok())
            .flatten()
            .map(|t| t.as_os_str().as_bytes().to_vec());
        Some(Entry {
            name,
            kind,
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            mode: meta.mode(),
            inode: meta.ino(),
            target,
        })
    }
}

fn type_of(t: &std::fs::FileType) -> FileType {
    if t.is_dir() {
        FileType::Dir
    } else if t.is_symlink() {
        FileType::Link
    } else if t.is_socket() {
        FileType::Socket
    } else if t.is_fifo() {
        FileType::Fifo
    } else if t.is_block_device() {
        FileType::Block
    } else if t.is_char_device() {
        FileType::Char
    } else {
        FileType::File
    }
}

/// `dir/name` (or `name` at the root).
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
        path.extend_from_slice(dir);
        path.push(b'/');
        path.extend_from_slice(name);
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walker(options: ScanOptions, root: &Path) -> Walker {
        Walker::new(root.to_str().unwrap(), &options).unwrap()
    }

    #[test]
    fn a_directory_is_listed_with_its_files_stated_and_its_excludes_counted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("a.txt"), "hello").unwrap();
        std::fs::write(root.join("b.tmp"), "x").unwrap();
        std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
        let options = ScanOptions {
            exclude_files: Some(r"\.tmp$".into()),
            exclude_dirs: Some(r"^\.git$".into()),
            ..ScanOptions::default()
        };
        let Looked::Listed(mut l) = walker(options, root).look(b"", 0) else {
            panic!("not listed")
        };
        l.files.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(l.dirs, [b"sub".to_vec()]);
        let mut excluded = l.excluded.clone();
        excluded.sort();
        assert_eq!(excluded, [b".git".to_vec(), b"b.tmp".to_vec()]);
        let names: Vec<&[u8]> = l.files.iter().map(|f| f.name.as_slice()).collect();
        assert_eq!(names, [b"a.txt".as_slice(), b"link"]);
        assert_eq!((l.files[0].kind, l.files[0].size), (FileType::File, 5));
        assert_eq!(l.files[1].kind, FileType::Link);
        assert_eq!(l.files[1].target.as_deref(), Some(b"a.txt".as_slice()));
        assert!(l.files[0].signature().starts_with("f:5:"));
        let fields = l.files[0].fields();
        assert_eq!(fields[0], ("type", b"file".to_vec()));
        assert_eq!(fields[4], ("mode", b"100644".to_vec()));
        // Links followed: the link is a file like its target.
        let follow = ScanOptions {
            follow_links: true,
            ..ScanOptions::default()
        };
        let Looked::Listed(l) = walker(follow, root).look(b"", 0) else {
            panic!()
        };
        assert!(l.files.iter().all(|f| f.kind == FileType::File));
        // Links back up are loops, not directories: counted as excluded, not walked.
        std::os::unix::fs::symlink("..", root.join("sub/up")).unwrap();
        std::os::unix::fs::symlink(".", root.join("sub/deeper/self")).unwrap();
        std::fs::create_dir_all(root.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink("../../elsewhere", root.join("sub/deeper/side")).unwrap();
        let follow = ScanOptions {
            follow_links: true,
            ..ScanOptions::default()
        };
        let w = walker(follow, root);
        let Looked::Listed(l) = w.look(b"sub", 1) else {
            panic!()
        };
        assert_eq!(
            (l.dirs.clone(), l.excluded.clone()),
            (vec![b"deeper".to_vec()], vec![b"up".to_vec()])
        );
        let Looked::Listed(mut l) = w.look(b"sub/deeper", 2) else {
            panic!()
        };
        l.dirs.sort();
        // A link to a directory elsewhere is walked; one to itself is not.
        assert_eq!(
            (l.dirs, l.excluded),
            (vec![b"side".to_vec()], vec![b"self".to_vec()])
        );
        // A subdirectory gone is gone; the root gone is a mount gone, not a deletion.
        assert_eq!(
            walker(ScanOptions::default(), root).look(b"nope", 1),
            Looked::Gone
        );
        let missing = walker(ScanOptions::default(), &root.join("missing"));
        assert!(matches!(missing.look(b"", 0), Looked::Unreadable(_)));
    }

    #[test]
    fn a_large_directory_is_split_into_batches_of_files_per_task() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..25 {
            std::fs::write(dir.path().join(format!("f{i}")), "").unwrap();
        }
        let options = ScanOptions {
            files_per_task: 10,
            ..ScanOptions::default()
        };
        let w = walker(options, dir.path());
        let Looked::Listed(l) = w.look(b"", 0) else {
            panic!()
        };
        assert!(l.files.is_empty());
        let sizes: Vec<usize> = l.batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 5]);
        let (files, unreadable) = w.stat(b"", l.batches[2].clone());
        assert_eq!((files.len(), unreadable.len()), (5, 0));
        let (_, unreadable) = w.stat(b"", vec![b"gone".to_vec()]);
        assert_eq!(unreadable, [b"gone".to_vec()]);
        assert_eq!(join(b"", b"a"), b"a");
        assert_eq!(join(b"x/y", b"a"), b"x/y/a");
    }
}
