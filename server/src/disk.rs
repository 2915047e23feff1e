//! The driver's side of a shard's log: files under `--data-dir`, read back
//! at start-up and appended to with glommio's DMA files (O_DIRECT, reads,
//! writes and `fdatasync` through io_uring: no blocking call on a shard
//! thread once it serves).
//!
//! Layout: `DATA_DIR/meta` names the shard count (ids are routed by
//! `id % shards`, so a data dir only opens with the count that wrote it);
//! `DATA_DIR/shard-<i>/log-<generation>.rlog` is shard `i`'s log. A
//! compaction writes generation `g + 1` (a snapshot ending in
//! `SnapshotEnd`), makes it durable, syncs the directory, then removes
//! generation `g`. At start-up the newest generation that is complete wins
//! (a bad record after its snapshot refuses the start); an unfinished
//! newer one (a crash mid-compaction) is removed, once the older one has
//! recovered, unless records follow its snapshot (then it was durable and
//! is damaged: the start is refused) or no older one is left (refused too).
//! `DATA_DIR/meta` also records the log format ([`LOG_FORMAT`]).
//! `DATA_DIR/lock` is held with an exclusive `flock` while a hub runs
//! ([`LOCK_FILE`]): a second hub refuses the directory.
//!
//! Writes: with `--fsync always` the file is written in whole blocks of
//! its DMA alignment. The last, partial block is kept in memory and
//! written again, longer, with the next batch, so records are never split
//! across a write that could tear except the last one. With `interval`
//! and `never` batches go through the OS page cache instead (a second,
//! buffered descriptor of the same file; see [`DiskLog::append`]). The file is preallocated in [`PREALLOCATE_BYTES`] steps, asked
//! for once less than [`GROW_AHEAD_BYTES`] is left past the end: what lies
//! past the last record reads as zeros, the log's end marker.
//!
//! Zeros ahead: `fallocate` leaves *unwritten* extents, and a write into
//! one is not a plain overwrite: ext4 converts the extent when it
//! completes, so io_uring cannot issue it inline (it goes to a kernel
//! worker thread) and the next `fdatasync` commits the journal. On this
//! machine's disk that halves the rate of 4 KiB write+`fdatasync` pairs
//! (docs/architecture.md, "Zeros ahead of the log"). So after a small
//! batch the log writes zeros over the next [`ZERO_WRITE_BYTES`] of
//! preallocated room until [`ZERO_AHEAD_BYTES`] past its end is written:
//! batches then overwrite blocks that already exist. A batch of
//! [`ZERO_WRITE_BYTES`] or more skips it (its conversion is amortized, and
//! zeroing ahead would double its bandwidth). Writes through the page
//! cache skip it: writeback converts extents in bulk.
//!
//! A full disk: when the disk cannot give a step (ENOSPC from `fallocate`),
//! the log asks for smaller ones, down to [`GROW_MIN_BYTES`], each only if
//! [`DISK_RESERVE_BYTES`] stays free past it; a failed `fallocate` gives back
//! what it took (ext4 keeps the part it found). When none fits, the log is
//! *limited* to what it has: [`DiskLog::room`] tells the core, which refuses
//! new entries (`StorageFull`) while the reserve in the file takes the
//! other records (acks, tokens, sessions), and compacts as soon as acks make
//! that worth it. The snapshot of a compaction gets just the room it needs,
//! from the reserve left on the disk. Growth is asked for again every
//! [`GROW_RETRY`] while limited, so space freed by others is used.

use std::{
    cell::RefCell,
    fs, io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    rc::Rc,
    time::{Duration, Instant},
};

use glommio::io::{BufferedFile, DmaFile, OpenOptions};

use crate::{
    config::Fsync,
    shard::{record_len, LogBatch, LogPos, Shard},
    store::recovery::{Scan, Scanner, Verdict},
};

/// Preallocation step of a log file: 64 MiB.
pub const PREALLOCATE_BYTES: u64 = 64 << 20;

/// The log asks for its next preallocation step once less than this is
/// preallocated past its end: 16 MiB.
pub const GROW_AHEAD_BYTES: u64 = 16 << 20;

/// The smallest step asked for when the disk cannot give a whole one:
/// 1 MiB (steps halve from [`PREALLOCATE_BYTES`]).
pub const GROW_MIN_BYTES: u64 = 1 << 20;

/// Room the log leaves free on the disk when it grows, for a compaction's
/// snapshot once the disk is full: 1 MiB.
pub const DISK_RESERVE_BYTES: u64 = 1 << 20;

/// How often a log the disk refused to grow asks again: 100 ms.
pub const GROW_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Zeros written at a time ahead of the log's end: 256 KiB (about 0.3 ms
/// of this machine's disk, the most a batch waits for one).
pub const ZERO_WRITE_BYTES: u64 = 256 << 10;

/// How far past the log's end zeros are written ahead: 2 MiB.
pub const ZERO_AHEAD_BYTES: u64 = 2 << 20;

/// Bytes read per recovery read: 8 MiB.
pub const RECOVERY_READ_BYTES: usize = 8 << 20;

/// Bytes a compaction gathers (its records and the records it copies from
/// the current file) before each write of the new file: 4 MiB.
pub const COMPACTION_WRITE_BYTES: usize = 4 << 20;

/// Name of the file that records the shard count.
const META_FILE: &str = "meta";

/// Name of the file a running hub holds an exclusive lock on (`flock`),
/// so that a second hub refuses the directory instead of writing the same
/// logs. The kernel drops the lock when the process ends, however it ends.
pub const LOCK_FILE: &str = "lock";

/// The log format this build writes, recorded in `meta` as `format=<n>`:
/// 1 (no `format` line) before `NextSeq` records (kind 12), 2 since. A
/// directory of format 1 is upgraded at start; one of a newer format is
/// refused. Builds of format 1 refuse a `meta` with a `format` line (they
/// read `shards=<n>` alone), so they cannot misread, and drop, a log with
/// records they do not know.
pub const LOG_FORMAT: u32 = 2;

/// Why the data directory cannot be used.
#[derive(Debug)]
pub enum DataDirError {
    /// A filesystem call failed.
    Io(PathBuf, io::Error),
    /// The directory was written by a hub with another shard count.
    ShardCount {
        /// The directory.
        dir: PathBuf,
        /// Shards that wrote it.
        found: usize,
        /// Shards asked for now.
        asked: usize,
    },
    /// A record in the middle of a log does not check out.
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// Where the next valid record starts.
        next_valid: u64,
    },
    /// The directory was written by a newer build, in a log format this
    /// one does not read.
    Format {
        /// The directory.
        dir: PathBuf,
        /// Its format.
        found: u32,
    },
    /// The only log generation holds an unfinished compaction snapshot
    /// (there is no older generation to fall back to).
    Incomplete(PathBuf),
    /// Another process holds the directory's lock file: a hub runs on it.
    Locked(PathBuf),
    /// `meta` is missing while shard directories exist.
    MetaMissing {
        /// The directory.
        dir: PathBuf,
        /// `shard-<i>` directories in it.
        found: usize,
    },
}

impl DataDirError {
    /// `file` holds `corruption`: a bad record with valid ones after it.
    fn corrupt(file: &Path, corruption: crate::store::recovery::Corruption) -> DataDirError {
        DataDirError::Corrupt {
            file: file.to_path_buf(),
            offset: corruption.offset,
            next_valid: corruption.next_valid,
        }
    }
}

impl std::fmt::Display for DataDirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataDirError::Io(path, error) => write!(f, "{}: {error}", path.display()),
            DataDirError::ShardCount { dir, found, asked } => write!(
                f,
                "{} was written by a hub with {found} shards; start with --shards {found} \
                 (ids are routed by shard count), or use another --data-dir for {asked}",
                dir.display()
            ),
            DataDirError::Corrupt {
                file,
                offset,
                next_valid,
            } => write!(
                f,
                "{}: the record at byte {offset} is corrupt and valid records follow \
                 (from byte {next_valid}); refusing to start rather than skip them. \
                 Restore the file from a backup, or truncate it at byte {offset} to \
                 drop everything from there",
                file.display()
            ),
            DataDirError::Format { dir, found } => write!(
                f,
                "{} holds a log of format {found}, written by a newer relayhub; this \
                 build reads formats up to {LOG_FORMAT}: start the newer build on it",
                dir.display()
            ),
            DataDirError::MetaMissing { dir, found } => write!(
                f,
                "{} has {found} shard directories but no {META_FILE} file, which records \
                 the shard count that wrote them; refusing to start rather than guess. \
                 Restore it (a line shards=<n>, most likely shards={found}), or use another \
                 --data-dir",
                dir.display()
            ),
            DataDirError::Locked(dir) => write!(
                f,
                "{} is in use by another relayhub (it holds {}): stop that hub first, \
                 or use another --data-dir",
                dir.display(),
                dir.join(LOCK_FILE).display()
            ),
            DataDirError::Incomplete(file) => write!(
                f,
                "{}: the log's only generation holds an unfinished compaction and no \
                 older generation is left to recover from; refusing to start rather \
                 than start empty. Restore the data directory from a backup, or move \
                 the file away to start with an empty log",
                file.display()
            ),
        }
    }
}

/// One shard's log files, found at start-up.
#[derive(Debug, Clone)]
pub struct ShardFiles {
    /// `DATA_DIR/shard-<i>`.
    pub dir: PathBuf,
    /// `(generation, path)`, newest first.
    pub generations: Vec<(u64, PathBuf)>,
}

/// The data directory, locked for this process, and its shards' files.
#[derive(Debug)]
pub struct Prepared {
    /// Holds the directory's lock until dropped (keep it until the shards
    /// have stopped).
    pub lock: fs::File,
    /// Each shard's log files.
    pub shards: Vec<ShardFiles>,
}

/// Creates or opens the data directory for `shards` shards (on the
/// starting thread, before the shards run), and locks it.
pub fn prepare(data_dir: &Path, shards: usize) -> Result<Prepared, DataDirError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| DataDirError::Io(path, error)
    };
    fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    // Absolute from here on: the shards open their directories through
    // glommio, whose `Directory::open` passes no working directory to
    // `openat` and fails a relative path with EBADF (the default
    // `relayhub-data/` is relative), which made every compaction fail.
    let data_dir = &fs::canonicalize(data_dir).map_err(io(data_dir))?;
    let lock_path = data_dir.join(LOCK_FILE);
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    // SAFETY: `lock` owns the descriptor, open for the whole call; flock
    // touches nothing but the lock of the file it names.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        return Err(if error.kind() == io::ErrorKind::WouldBlock {
            DataDirError::Locked(data_dir.to_path_buf())
        } else {
            DataDirError::Io(lock_path, error)
        });
    }
    let meta = data_dir.join(META_FILE);
    let invalid = |why: &str| {
        DataDirError::Io(
            meta.clone(),
            io::Error::new(io::ErrorKind::InvalidData, why.to_string()),
        )
    };
    let write_meta = || -> Result<(), DataDirError> {
        // A new file renamed over the old one: never a half-written meta.
        let fresh = data_dir.join(format!("{META_FILE}.new"));
        fs::write(&fresh, format!("shards={shards}\nformat={LOG_FORMAT}\n")).map_err(io(&fresh))?;
        fs::File::open(&fresh)
            .and_then(|file| file.sync_all())
            .map_err(io(&fresh))?;
        fs::rename(&fresh, &meta).map_err(io(&meta))?;
        fs::File::open(data_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(data_dir))
    };
    match fs::read_to_string(&meta) {
        Ok(text) => {
            let (mut found, mut format) = (None, 1);
            for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
                if let Some(n) = line.strip_prefix("shards=") {
                    found = Some(
                        n.parse::<usize>()
                            .map_err(|_| invalid("expected shards=<n>"))?,
                    );
                } else if let Some(n) = line.strip_prefix("format=") {
                    format = n
                        .parse::<u32>()
                        .map_err(|_| invalid("expected format=<n>"))?;
                } else {
                    return Err(invalid("expected shards=<n> and format=<n> lines"));
                }
            }
            let found = found.ok_or_else(|| invalid("expected shards=<n>"))?;
            if found != shards {
                return Err(DataDirError::ShardCount {
                    dir: data_dir.to_path_buf(),
                    found,
                    asked: shards,
                });
            }
            if format > LOG_FORMAT {
                return Err(DataDirError::Format {
                    dir: data_dir.to_path_buf(),
                    found: format,
                });
            }
            if format < LOG_FORMAT {
                write_meta()?;
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            // No `meta` but shard directories: the count that wrote them is
            // unknown, and ids routed by another count would miss their
            // sessions. Refuse rather than guess.
            let found = fs::read_dir(data_dir)
                .map_err(io(data_dir))?
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().starts_with("shard-"))
                .count();
            if found > 0 {
                return Err(DataDirError::MetaMissing {
                    dir: data_dir.to_path_buf(),
                    found,
                });
            }
            write_meta()?
        }
        Err(error) => return Err(DataDirError::Io(meta, error)),
    }
    let shards = (0..shards)
        .map(|index| {
            let dir = data_dir.join(format!("shard-{index}"));
            fs::create_dir_all(&dir).map_err(io(&dir))?;
            let mut generations = Vec::new();
            for entry in fs::read_dir(&dir).map_err(io(&dir))? {
                let entry = entry.map_err(io(&dir))?;
                let name = entry.file_name();
                let Some(generation) = name
                    .to_str()
                    .and_then(|name| name.strip_prefix("log-"))
                    .and_then(|name| name.strip_suffix(".rlog"))
                    .and_then(|number| number.parse::<u64>().ok())
                else {
                    continue;
                };
                generations.push((generation, entry.path()));
            }
            generations.sort_unstable_by_key(|&(generation, _)| std::cmp::Reverse(generation));
            Ok(ShardFiles { dir, generations })
        })
        .collect::<Result<_, DataDirError>>()?;
    Ok(Prepared { lock, shards })
}

/// Opens the log file at `path` without `O_DIRECT` for appends through the
/// page cache: with `--fsync interval` and `never` only.
async fn open_buffered(path: &Path, policy: Fsync) -> glommio::Result<Option<BufferedFile>, ()> {
    if policy == Fsync::Always {
        return Ok(None);
    }
    OpenOptions::new()
        .write(true)
        .buffered_open(path)
        .await
        .map(Some)
}

/// `fdatasync`s `file`, counted in `fsyncs` and timed in `fsync_latency`
/// when it succeeds.
async fn fdatasync_counted(
    file: &DmaFile,
    stats: &crate::stats::ShardStats,
) -> glommio::Result<(), ()> {
    let started = Instant::now();
    file.fdatasync().await?;
    stats.fsyncs.incr();
    stats
        .fsync_latency
        .observe(started.elapsed().as_micros() as u64);
    Ok(())
}

fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("log-{generation:08}.rlog"))
}

/// How often a run of failures of one kind (log writes, syncs) is logged
/// at most, after its first.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Log lines for failed log writes or syncs: the first of a run, then at
/// most one every [`FAILURE_LOG_INTERVAL`], and one when they succeed
/// again.
#[derive(Default)]
pub struct LogFailures {
    run: u64,
    last: Option<Instant>,
}

impl LogFailures {
    /// One more failure.
    pub fn report(&mut self, error: &dyn std::fmt::Display, what: &str) {
        self.run += 1;
        if self
            .last
            .is_none_or(|last| last.elapsed() >= FAILURE_LOG_INTERVAL)
        {
            tracing::error!(%error, failures = self.run, "{what}");
            self.last = Some(Instant::now());
        }
    }

    /// A success: the run, if any, is over.
    pub fn recovered(&mut self, what: &str) {
        if self.run > 0 {
            tracing::info!(failures = self.run, "{what}");
        }
        *self = LogFailures::default();
    }
}

/// The background `fdatasync` of `--fsync interval`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum SyncState {
    /// None running; the last one succeeded (or none ran yet).
    #[default]
    Idle,
    /// One is running.
    Running,
    /// The last one failed: the next interval syncs whatever was written.
    Failed,
}

/// What a shard's recovery found, for its log line and counters.
#[derive(Debug)]
pub struct Recovered {
    /// The scan of the generation used.
    pub scan: Scan,
    /// Milliseconds it took.
    pub elapsed_ms: u64,
    /// The file.
    pub file: PathBuf,
}

/// The log files that records may be read back from, by generation: the
/// current one, and during a compaction's switch the one before (kept open
/// until the core has moved its entries' positions to the new file).
#[derive(Clone, Default)]
pub struct LogFiles(Rc<RefCell<Vec<OpenGeneration>>>);

/// A generation's number and its open file.
type OpenGeneration = (u64, Rc<DmaFile>);

/// The file of a record's generation is not open (a bug: the core names
/// only the current generation, or the one before while it moves its
/// entries).
#[derive(Debug)]
pub struct NoFile(pub u64);

impl std::fmt::Display for NoFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "log generation {} is not open", self.0)
    }
}

impl LogFiles {
    fn set(&self, generation: u64, file: Rc<DmaFile>) {
        self.0.borrow_mut().push((generation, file));
    }

    /// Closes every file but the newest one.
    pub fn retire_old(&self) {
        let mut files = self.0.borrow_mut();
        let keep = files.len().saturating_sub(1);
        files.drain(..keep);
    }

    fn get(&self, generation: u64) -> Option<Rc<DmaFile>> {
        let files = self.0.borrow();
        files
            .iter()
            .find(|(g, _)| *g == generation)
            .map(|(_, file)| file.clone())
    }

    /// The open file the record at `pos` lies in. Taken when the core hands
    /// the read out, so that a compaction finishing meanwhile cannot close
    /// it under the read.
    pub fn file(&self, pos: LogPos) -> Result<Rc<DmaFile>, NoFile> {
        let generation = u64::from(pos.generation);
        self.get(generation).ok_or(NoFile(generation))
    }
}

/// Reads the record at `pos` of `file`: its bytes, fewer where the file
/// ends first (which the core then finds truncated).
pub async fn read_record(
    file: &DmaFile,
    pos: LogPos,
) -> glommio::Result<glommio::io::ReadResult, ()> {
    file.read_at(pos.offset, pos.len.get() as usize).await
}

/// A shard's open log.
pub struct DiskLog {
    dir: PathBuf,
    generation: u64,
    file: Rc<DmaFile>,
    /// With `--fsync interval` and `never`: the same file opened without
    /// `O_DIRECT`, for appends (see [`DiskLog::append`]).
    buffered: Option<BufferedFile>,
    /// The files records are read back from.
    readable: LogFiles,
    /// File offset of `tail`'s first byte (a multiple of the alignment).
    write_offset: u64,
    /// The bytes of the last, partial block.
    tail: Vec<u8>,
    /// Bytes preallocated.
    allocated: u64,
    /// End of the blocks written (records or zeros): writes below it are
    /// plain overwrites.
    zeroed: u64,
    /// Bytes of the last append, tail included: a large one skips zeroing.
    last_append: u64,
    policy: Fsync,
    /// Bytes written since the last `fdatasync`.
    unsynced: bool,
    /// Where the `fdatasync` started by [`start_sync`](Self::start_sync)
    /// stands.
    syncing: Rc<std::cell::Cell<SyncState>>,
    /// The log lines of failed background syncs.
    sync_failures: Rc<RefCell<LogFailures>>,
    /// The shard's counters (fsync count and latency).
    stats: std::sync::Arc<crate::stats::ShardStats>,
    /// The disk refused to grow the file: the log holds what is allocated.
    limited: bool,
    /// While limited, when growth is asked for again.
    next_growth: Instant,
}

/// Why [`DiskLog::write`] failed.
#[derive(Debug)]
pub enum LogWriteError {
    /// The batch is not in the log (nothing of it counts): write it again.
    NotWritten(glommio::GlommioError<()>),
    /// The batch is written but its `fdatasync` failed: sync again.
    NotSynced(glommio::GlommioError<()>),
}

async fn scan_file<F: FnMut(crate::store::record::Record, u64, usize)>(
    file: &DmaFile,
    apply: F,
) -> glommio::Result<Result<Scan, crate::store::recovery::Corruption>, ()> {
    scan_file_from(file, 0, apply).await
}

/// [`scan_file`] from byte `from` on (a record's start), as if the log
/// began there: offsets are counted from `from`.
async fn scan_file_from<F: FnMut(crate::store::record::Record, u64, usize)>(
    file: &DmaFile,
    from: u64,
    apply: F,
) -> glommio::Result<Result<Scan, crate::store::recovery::Corruption>, ()> {
    let size = file.file_size().await?;
    let mut scanner = Scanner::new(apply);
    let alignment = file.alignment();
    let mut pos = from / alignment * alignment;
    let mut skip = (from - pos) as usize;
    while pos < size {
        let read = file.read_at_aligned(pos, RECOVERY_READ_BYTES).await?;
        if read.is_empty() {
            break;
        }
        scanner.feed(&read[skip.min(read.len())..]);
        skip = 0;
        pos += read.len() as u64;
    }
    Ok(scanner.finish())
}

/// Whether, from `from` on (past a bad record before any `SnapshotEnd`),
/// `file` holds a `SnapshotEnd` followed by records: the log appends after
/// a snapshot only once the snapshot is durable, so such records were
/// answered, and the generation is damaged, not unfinished. Bad stretches
/// are skipped.
async fn appended_after_snapshot(file: &DmaFile, mut from: u64) -> glommio::Result<bool, ()> {
    let mut seen_end = false;
    loop {
        let mut after = false;
        let scanned = scan_file_from(file, from, |record, _, _| {
            after |= seen_end;
            seen_end |= record == crate::store::record::Record::SnapshotEnd;
        })
        .await?;
        match scanned {
            _ if after => return Ok(true),
            Ok(_) => return Ok(false),
            Err(corruption) => from += corruption.next_valid,
        }
    }
}

/// Opens generation `generation`'s file at `path` (created if it is
/// missing) and feeds its records to `shard`, whose recovery starts afresh.
async fn recover_file<Io>(
    path: &Path,
    generation: u64,
    shard: &mut Shard<Io>,
    now_ms: u64,
) -> glommio::Result<(DmaFile, Result<Scan, crate::store::recovery::Corruption>), ()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await?;
    shard.begin_recovery(generation);
    let record_generation = u32::try_from(generation).expect("fewer than 2^32 compactions");
    let scanned = scan_file(&file, |record, offset, len| {
        let pos = LogPos {
            generation: record_generation,
            len: record_len(len),
            offset,
        };
        shard.recover(now_ms, record, pos)
    })
    .await?;
    Ok((file, scanned))
}

impl DiskLog {
    /// Opens shard `files`' log, feeding every record of the newest
    /// complete generation to `shard`; removes older and incomplete ones.
    pub async fn open<Io>(
        files: &ShardFiles,
        policy: Fsync,
        shard: &mut Shard<Io>,
        now_ms: u64,
    ) -> Result<(DiskLog, Recovered), DataDirError> {
        let started = Instant::now();
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |error: glommio::GlommioError<()>| {
                DataDirError::Io(path, io::Error::other(error.to_string()))
            }
        };
        let mut chosen = None;
        // Removed only once the chosen generation has recovered: a start
        // refused keeps every file as it was.
        let mut remove = Vec::new();
        let count = files.generations.len();
        for (index, (generation, path)) in files.generations.iter().enumerate() {
            if chosen.is_some() {
                // Superseded by a complete newer generation.
                remove.push((path.clone(), false));
                continue;
            }
            // Recovered while it is checked, so the file is read once; if
            // it is an unfinished compaction, the next generation's
            // `begin_recovery` forgets what it rebuilt.
            let (file, scanned) = recover_file(path, *generation, shard, now_ms)
                .await
                .map_err(io_error(path))?;
            if *generation > 0 {
                // Complete once its snapshot's end is among the valid
                // records: a bad record after it is corruption of this
                // generation (reported below), never a reason to fall back
                // to an older one. Unfinished: no `SnapshotEnd` among the
                // valid records, with the bad record that ends them, if any.
                let unfinished = match &scanned {
                    Ok(scan) if scan.snapshot_complete => None,
                    Err(corruption) if corruption.snapshot_complete => None,
                    Ok(_) => Some(None),
                    Err(corruption) => Some(Some(*corruption)),
                };
                if let Some(corruption) = unfinished {
                    // A bad record inside a snapshot that records were
                    // appended after: it was durable, and the older
                    // generation (if one is left) lacks what came since.
                    let damaged = match corruption {
                        Some(corruption) => appended_after_snapshot(&file, corruption.next_valid)
                            .await
                            .map_err(io_error(path))?,
                        None => false,
                    };
                    file.close().await.map_err(io_error(path))?;
                    // A crash during a compaction (its blocks may land out
                    // of order, so that can look like corruption too): the
                    // generation before it is still there, as it goes only
                    // once this one is durable, unless something else
                    // removed it. Nothing after an unfinished snapshot was
                    // answered.
                    if damaged || index + 1 == count {
                        return Err(corruption.map_or_else(
                            || DataDirError::Incomplete(path.clone()),
                            |corruption| DataDirError::corrupt(path, corruption),
                        ));
                    }
                    remove.push((path.clone(), true));
                    continue;
                }
            }
            chosen = Some((*generation, path.clone(), file, scanned));
        }
        let (generation, path, file, scanned) = match chosen {
            Some(chosen) => chosen,
            None => {
                // A new data dir: generation 0, created empty.
                let path = log_path(&files.dir, 0);
                let (file, scanned) = recover_file(&path, 0, shard, now_ms)
                    .await
                    .map_err(io_error(&path))?;
                (0, path, file, scanned)
            }
        };
        let scan = scanned.map_err(|corruption| DataDirError::corrupt(&path, corruption))?;
        for (old, incomplete) in remove {
            if incomplete {
                tracing::warn!(file = %old.display(), "removing an incomplete compaction");
            }
            glommio::io::remove(&old).await.map_err(io_error(&old))?;
        }
        if let Verdict::TornTail { dropped_bytes } = scan.verdict {
            tracing::warn!(
                file = %path.display(),
                offset = scan.valid_bytes,
                dropped_bytes,
                "log ends in a torn write (a crash during the last batch, never acknowledged): dropped"
            );
        }
        // Zero what follows the last valid record: a later recovery must
        // see the end there, not the old bytes.
        file.truncate(scan.valid_bytes)
            .await
            .map_err(io_error(&path))?;
        let alignment = file.alignment();
        let write_offset = scan.valid_bytes / alignment * alignment;
        let tail = if write_offset < scan.valid_bytes {
            let read = file
                .read_at_aligned(write_offset, alignment as usize)
                .await
                .map_err(io_error(&path))?;
            read[..(scan.valid_bytes - write_offset) as usize].to_vec()
        } else {
            Vec::new()
        };
        let file = Rc::new(file);
        let buffered = open_buffered(&path, policy)
            .await
            .map_err(io_error(&path))?;
        let readable = LogFiles::default();
        readable.set(generation, file.clone());
        let mut log = DiskLog {
            dir: files.dir.clone(),
            generation,
            file,
            buffered,
            readable,
            write_offset,
            tail,
            // The truncation left exactly the valid bytes.
            allocated: scan.valid_bytes,
            zeroed: scan.valid_bytes.next_multiple_of(alignment),
            last_append: 0,
            policy,
            unsynced: false,
            syncing: Rc::default(),
            sync_failures: Rc::default(),
            stats: shard.stats().clone(),
            limited: false,
            next_growth: Instant::now(),
        };
        // A full disk does not stop the start: the log is limited instead.
        log.grow().await;
        let recovered = Recovered {
            scan,
            elapsed_ms: started.elapsed().as_millis() as u64,
            file: path,
        };
        Ok((log, recovered))
    }

    /// Bytes the current file may hold, for the core: `u64::MAX` while the
    /// disk gives the log the room it asks for; what is preallocated once
    /// the disk refused to grow it.
    pub fn room(&self) -> u64 {
        if self.limited {
            self.allocated
        } else {
            u64::MAX
        }
    }

    /// The disk refused to grow the log; [`grow`](Self::grow) asks again
    /// every [`GROW_RETRY`].
    pub fn limited(&self) -> bool {
        self.limited
    }

    /// Preallocates ahead of the log's end when less than
    /// [`GROW_AHEAD_BYTES`] is left: a whole step, or the largest smaller
    /// ones the disk can give while keeping [`DISK_RESERVE_BYTES`] free
    /// (steps below [`GROW_AHEAD_BYTES`] reach one step past the end, then
    /// as many more as fit). When less than [`GROW_AHEAD_BYTES`] ahead fits,
    /// the log takes all the disk gives at once and is limited to it: it
    /// grows again only once the disk has room (space freed), not in small
    /// steps as its end moves on.
    pub async fn grow(&mut self) {
        let end = self.write_offset + self.tail.len() as u64;
        let want = end + GROW_AHEAD_BYTES;
        if want <= self.allocated {
            self.zero_ahead().await;
            return;
        }
        if Instant::now() < self.next_growth {
            return;
        }
        let mut step = PREALLOCATE_BYTES;
        let mut refused = None;
        while step >= GROW_MIN_BYTES {
            // [`GROW_AHEAD_BYTES`] past the end in whole steps while steps
            // are larger; then one step past the end, or past what is
            // allocated, so that a small disk still gives a small log room,
            // all of it.
            let size = (end + step.min(GROW_AHEAD_BYTES))
                .next_multiple_of(step)
                .max(self.allocated + step);
            // Take the reserve too, then give it back: the disk keeps it
            // free, for a compaction's snapshot.
            match self
                .file
                .pre_allocate(size + DISK_RESERVE_BYTES, false)
                .await
            {
                Ok(()) => {
                    self.allocated = size + DISK_RESERVE_BYTES;
                    if self.file.truncate(size).await.is_ok() {
                        self.allocated = size;
                    }
                    if size < want {
                        // Less than asked for: take more of this step.
                        continue;
                    }
                    if std::mem::take(&mut self.limited) {
                        tracing::info!(
                            file = %log_path(&self.dir, self.generation).display(),
                            allocated = self.allocated,
                            "the disk has room for the log again"
                        );
                    }
                    return;
                }
                Err(error) => {
                    self.give_back().await;
                    refused = Some(error);
                    step /= 2;
                }
            }
        }
        // The core keeps within what the file has, and room is asked for
        // again in a while.
        self.limit(refused);
    }

    /// The disk gave the log less room than [`grow`](Self::grow) asks for
    /// (or none): the log is limited to what is allocated, and asks again
    /// after [`GROW_RETRY`].
    fn limit(&mut self, refused: Option<glommio::GlommioError<()>>) {
        if !self.limited {
            tracing::warn!(
                error = %refused.map_or_else(String::new, |error| error.to_string()),
                file = %log_path(&self.dir, self.generation).display(),
                allocated = self.allocated,
                "the disk has no room to grow the log: new durable entries get StorageFull \
                 until acks let it compact or the disk has room again"
            );
        }
        self.limited = true;
        self.next_growth = Instant::now() + GROW_RETRY;
    }

    /// Writes [`ZERO_WRITE_BYTES`] of zeros past the log's end, within what
    /// is preallocated, unless [`ZERO_AHEAD_BYTES`] are written already or
    /// the last append was large. A failure only means the next batches
    /// write into unwritten extents, as without it.
    async fn zero_ahead(&mut self) {
        if self.buffered.is_some() {
            return;
        }
        let end = self.write_offset + self.tail.len() as u64;
        let alignment = self.file.alignment();
        let from = self.zeroed.max(end.next_multiple_of(alignment));
        if self.last_append >= ZERO_WRITE_BYTES || from >= end + ZERO_AHEAD_BYTES {
            return;
        }
        let to = (from + ZERO_WRITE_BYTES).min(self.allocated / alignment * alignment);
        if to <= from {
            return;
        }
        let len = (to - from) as usize;
        let mut buffer = self.file.alloc_dma_buffer(len);
        buffer.as_bytes_mut().fill(0);
        if let Ok(written) = self.file.write_at(buffer, from).await {
            if written == len {
                self.zeroed = to;
            }
        }
    }

    /// Truncates the file back to what is allocated: a failed
    /// `fallocate` can leave blocks it took (ext4 does).
    async fn give_back(&mut self) {
        let _ = self.file.truncate(self.allocated).await;
    }

    /// Makes sure the file has room up to `up_to` (a write is about to go
    /// there): a whole step if the disk has it and the log is not limited,
    /// else just that.
    async fn preallocate(&mut self, up_to: u64) -> glommio::Result<(), ()> {
        if up_to <= self.allocated {
            return Ok(());
        }
        if !self.limited {
            let size = up_to.next_multiple_of(PREALLOCATE_BYTES);
            if self.file.pre_allocate(size, false).await.is_ok() {
                self.allocated = size;
                return Ok(());
            }
            self.give_back().await;
        }
        match self.file.pre_allocate(up_to, false).await {
            Ok(()) => {
                self.allocated = up_to;
                Ok(())
            }
            Err(error) => {
                self.give_back().await;
                Err(error)
            }
        }
    }

    /// Writes `batch` (and syncs, as the policy says). A new generation is
    /// written to a new file, made durable with its directory, and the old
    /// file removed; if that fails, the old file stays the log, as it was.
    pub async fn write(&mut self, batch: &LogBatch) -> Result<(), LogWriteError> {
        if batch.new_generation {
            return self
                .write_generation(batch)
                .await
                .map_err(LogWriteError::NotWritten);
        }
        self.append(&batch.bytes)
            .await
            .map_err(LogWriteError::NotWritten)?;
        if self.policy == Fsync::Always {
            self.sync().await.map_err(LogWriteError::NotSynced)?;
        }
        Ok(())
    }

    /// Appends `bytes` after the last record. With `--fsync always` it is
    /// a DMA write (`O_DIRECT`) of whole blocks, the partial last block
    /// written again each time; with `interval` and `never` it is a write
    /// of just `bytes` through the page cache, done once the kernel holds
    /// them: a crash of the hub loses nothing written, and `fdatasync` (on
    /// either descriptor: it syncs the file) makes it durable. O_DIRECT
    /// reads of the log (bodies read back, compaction) see those bytes: the
    /// kernel writes a range's dirty pages back before a direct read of it.
    /// This costs a memory copy into the page cache instead of a wait for
    /// the device on every batch.
    async fn append(&mut self, bytes: &[u8]) -> glommio::Result<(), ()> {
        if self.buffered.is_some() {
            let alignment = self.file.alignment();
            let end = self.write_offset + self.tail.len() as u64;
            let new_end = end + bytes.len() as u64;
            self.preallocate(new_end).await?;
            let buffered = self.buffered.as_ref().expect("checked above");
            let written = buffered.write_at(bytes.to_vec(), end).await?;
            if written != bytes.len() {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "short write").into());
            }
            // Keep the partial last block as the DMA path does, so that the
            // end stays `write_offset + tail.len()` for both.
            let new_offset = new_end / alignment * alignment;
            let partial = (new_end - new_offset) as usize;
            if new_offset == self.write_offset {
                self.tail.extend_from_slice(bytes);
            } else {
                self.tail.clear();
                self.tail.extend_from_slice(&bytes[bytes.len() - partial..]);
            }
            self.write_offset = new_offset;
            self.last_append = bytes.len() as u64;
            self.unsynced = true;
            return Ok(());
        }
        let alignment = self.file.alignment() as usize;
        let total = self.tail.len() + bytes.len();
        let aligned = total.next_multiple_of(alignment);
        self.preallocate(self.write_offset + aligned as u64).await?;
        let mut buffer = self.file.alloc_dma_buffer(aligned);
        let out = buffer.as_bytes_mut();
        out[..self.tail.len()].copy_from_slice(&self.tail);
        out[self.tail.len()..total].copy_from_slice(bytes);
        out[total..].fill(0);
        // The last, partial block is written again with the next batch.
        let full = total / alignment * alignment;
        let tail = out[full..total].to_vec();
        let written = self.file.write_at(buffer, self.write_offset).await?;
        if written != aligned {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short DMA write").into());
        }
        self.tail = tail;
        self.zeroed = self.zeroed.max(self.write_offset + aligned as u64);
        self.last_append = total as u64;
        self.write_offset += full as u64;
        self.unsynced = true;
        Ok(())
    }

    async fn write_generation(&mut self, batch: &LogBatch) -> glommio::Result<(), ()> {
        let next = self.generation + 1;
        let path = log_path(&self.dir, next);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&path)
            .await?;
        let mut fresh = DiskLog {
            dir: self.dir.clone(),
            generation: next,
            file: Rc::new(file),
            // The snapshot goes O_DIRECT (synced at once anyway); appends
            // after it as the policy says, from the descriptor opened below.
            buffered: None,
            readable: self.readable.clone(),
            write_offset: 0,
            tail: Vec::new(),
            allocated: 0,
            zeroed: 0,
            last_append: 0,
            policy: self.policy,
            unsynced: false,
            syncing: Rc::default(),
            sync_failures: Rc::default(),
            stats: self.stats.clone(),
            // Limited: the snapshot gets just the room it needs.
            limited: self.limited,
            next_growth: self.next_growth,
        };
        // The snapshot must be durable, and its name too, before the old
        // generation goes, whatever the policy.
        let written = async {
            self.write_snapshot(&mut fresh, batch).await?;
            fresh.sync().await?;
            glommio::io::Directory::open(&self.dir)
                .await?
                .sync()
                .await?;
            fresh.buffered = open_buffered(&path, self.policy).await?;
            Ok(())
        }
        .await;
        if let Err(error) = written {
            // The old generation stays the log; what was written of the new
            // one goes (a start would remove it as incomplete anyway).
            if let Some(buffered) = fresh.buffered.take() {
                let _ = buffered.close().await;
            }
            let _ = fresh.file.close_rc().await;
            let _ = glommio::io::remove(&path).await;
            return Err(error);
        }
        self.readable.set(next, fresh.file.clone());
        let mut old = std::mem::replace(self, fresh);
        if let Some(buffered) = old.buffered.take() {
            let _ = buffered.close().await;
        }
        // The old file's room is free now: ask for room at once.
        self.next_growth = Instant::now();
        let old_path = log_path(&old.dir, old.generation);
        // Still open for reads until the core moved its entries to the new
        // file (`LogFiles::retire_old`): removing the name is enough.
        let removed = match old.file.close_rc().await {
            Ok(_) => glommio::io::remove(&old_path).await,
            Err(error) => Err(error),
        };
        if let Err(error) = removed {
            // The new generation is the log: the next start removes this one.
            tracing::warn!(%error, file = %old_path.display(), "could not remove a superseded log generation");
        }
        Ok(())
    }

    /// Writes a snapshot to `fresh`: its records, with the records it
    /// copies from this file in between, in writes of about
    /// [`COMPACTION_WRITE_BYTES`].
    async fn write_snapshot(
        &self,
        fresh: &mut DiskLog,
        batch: &LogBatch,
    ) -> glommio::Result<(), ()> {
        let mut staged: Vec<u8> =
            Vec::with_capacity(COMPACTION_WRITE_BYTES.min(batch.len() as usize));
        let mut done = 0;
        let copies = batch.copies.iter().map(|&(at, pos)| (at, Some(pos)));
        for (at, copy) in copies.chain([(batch.bytes.len(), None)]) {
            staged.extend_from_slice(&batch.bytes[done..at]);
            done = at;
            if let Some(pos) = copy {
                let read = self
                    .file
                    .read_at(pos.offset, pos.len.get() as usize)
                    .await?;
                if read.len() < pos.len.get() as usize {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "a record to copy lies past the end of the log",
                    )
                    .into());
                }
                staged.extend_from_slice(&read[..pos.len.get() as usize]);
            }
            if staged.len() >= COMPACTION_WRITE_BYTES || (copy.is_none() && !staged.is_empty()) {
                fresh.append(&staged).await?;
                staged.clear();
            }
        }
        Ok(())
    }

    /// The files records are read back from.
    pub fn readable(&self) -> LogFiles {
        self.readable.clone()
    }

    /// `fdatasync` if anything was written since the last one.
    pub async fn sync(&mut self) -> glommio::Result<(), ()> {
        if self.unsynced {
            fdatasync_counted(&self.file, &self.stats).await?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// With `--fsync interval`: starts an `fdatasync` of the file in a task
    /// of its own if anything was written since the last one and none is
    /// running. Appends go on meanwhile: they are in the page cache, and
    /// nothing waits for this sync (the policy's loss window is the
    /// interval plus the sync's own time). A failure is logged and counted
    /// in `log_write_errors`, and the next interval syncs again, whether or
    /// not anything was written since.
    pub fn start_sync(&mut self) {
        match self.syncing.get() {
            SyncState::Running => return,
            SyncState::Failed => self.unsynced = true,
            SyncState::Idle => {}
        }
        if !self.unsynced {
            return;
        }
        self.unsynced = false;
        self.syncing.set(SyncState::Running);
        let (file, stats, syncing) = (self.file.clone(), self.stats.clone(), self.syncing.clone());
        let failures = self.sync_failures.clone();
        glommio::spawn_local(async move {
            let state = match fdatasync_counted(&file, &stats).await {
                Ok(()) => {
                    failures
                        .borrow_mut()
                        .recovered("fdatasync of the log works again");
                    SyncState::Idle
                }
                Err(error) => {
                    stats.log_write_errors.incr();
                    failures
                        .borrow_mut()
                        .report(&error, "fdatasync of the log failed");
                    SyncState::Failed
                }
            };
            syncing.set(state);
        })
        .detach();
    }

    /// The fsync policy.
    pub fn policy(&self) -> Fsync {
        self.policy
    }
}
