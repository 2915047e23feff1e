//! Benchmarks live in `benches/`; this library holds only what several of
//! them share.

/// Pins the calling thread to `core`; a machine without it just runs unpinned.
pub fn pin_to_core(core: usize) {
    // SAFETY: `cpu_set_t` is plain old data, for which all-zero is the empty
    // set; CPU_SET writes within it for any core below CPU_SETSIZE (1024), and
    // sched_setaffinity only reads `set` for the given size.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        eprintln!(
            "could not pin to core {core}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The number in the environment variable `name`, or `default` when it is
/// unset; a value that is not a whole number ends the bench with its name.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not a whole number")),
        Err(_) => default,
    }
}
