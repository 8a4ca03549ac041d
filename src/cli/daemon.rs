//! Options every daemon shares (`-v`, `-o`, `-d`) and what they do to the process: verbosity, where
//! the log goes, and detaching into the background with a pid file. This runs before any thread is
//! started, because `fork` in a threaded process keeps only the calling thread.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{CliError, OptSpec, Parsed};

/// `-v`, `-o`, `-d`, as in kumofs.
pub const COMMON_SPECS: [OptSpec; 3] = [
    OptSpec::flag(
        "-v",
        "--verbose",
        "log informational lines, not only warnings",
    ),
    OptSpec::value(
        "-o",
        "--log",
        "path",
        "append the log to this file instead of stderr",
    ),
    OptSpec::value(
        "-d",
        "--daemon",
        "pidfile",
        "run in the background and write the pid here",
    ),
];

/// Applies the common options: verbosity, log file, daemonizing.
pub fn apply_common(parsed: &Parsed) -> Result<(), CliError> {
    super::log::set_verbose(parsed.flag("verbose"));
    if let Some(path) = parsed.get("daemon") {
        daemonize(Path::new(path), parsed.get("log").is_none())?;
    }
    if let Some(path) = parsed.get("log") {
        redirect_stderr(Path::new(path))?;
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString, CliError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| CliError(format!("path {} contains a NUL byte", path.display())))
}

fn redirect_stderr(path: &Path) -> Result<(), CliError> {
    let c = c_path(path)?;
    // SAFETY: plain libc calls on a valid C string and our own descriptors.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
            0o644,
        )
    };
    if fd < 0 {
        return Err(CliError(format!(
            "cannot open log {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        )));
    }
    unsafe {
        libc::dup2(fd, 1);
        libc::dup2(fd, 2);
        libc::close(fd);
    }
    Ok(())
}

fn daemonize(pidfile: &Path, quiet: bool) -> Result<(), CliError> {
    // SAFETY: called before any thread exists; the parent exits at once.
    match unsafe { libc::fork() } {
        -1 => {
            return Err(CliError(format!(
                "fork: {}",
                std::io::Error::last_os_error()
            )))
        }
        0 => {}
        _ => std::process::exit(0),
    }
    unsafe { libc::setsid() };
    std::fs::write(pidfile, format!("{}\n", std::process::id()))
        .map_err(|e| CliError(format!("cannot write pid file {}: {e}", pidfile.display())))?;
    if quiet {
        let devnull = c_path(Path::new("/dev/null"))?;
        unsafe {
            let fd = libc::open(devnull.as_ptr(), libc::O_RDWR);
            if fd >= 0 {
                libc::dup2(fd, 0);
                libc::dup2(fd, 1);
                libc::dup2(fd, 2);
                libc::close(fd);
            }
        }
    }
    Ok(())
}
