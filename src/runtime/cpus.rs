//! CPU selection: the `--cpus 0,2-3` list parser and the default "every CPU this process may run on".

use std::collections::BTreeSet;

use super::RuntimeError;

/// Largest CPU number accepted in a list; guards against `0-4000000000` allocating a huge set.
pub const MAX_CPU: usize = 4095;

/// Parses a CPU list such as `0`, `0,2`, `1-3` or `0,2-3,7` into sorted, distinct CPU numbers.
///
/// Whitespace around items is ignored. Empty items, reversed ranges (`3-1`), non-numbers and
/// numbers above [`MAX_CPU`] are errors.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, RuntimeError> {
    let bad = |why: &str| RuntimeError::BadCpuList(format!("{text:?}: {why}"));
    let mut cpus = BTreeSet::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(bad("empty item"));
        }
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (parse_cpu(a.trim()), parse_cpu(b.trim())),
            None => (parse_cpu(item), parse_cpu(item)),
        };
        let (Some(first), Some(last)) = (first, last) else {
            return Err(bad(&format!("{item:?} is not a CPU number or range")));
        };
        if first > last {
            return Err(bad(&format!("range {item:?} is reversed")));
        }
        cpus.extend(first..=last);
    }
    Ok(cpus.into_iter().collect())
}

fn parse_cpu(text: &str) -> Option<usize> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<usize>().ok().filter(|&cpu| cpu <= MAX_CPU)
}

/// The CPUs this process is allowed to run on (its affinity mask), in ascending order.
pub fn available_cpus() -> Result<Vec<usize>, RuntimeError> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most size_of::<cpu_set_t>() bytes.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(RuntimeError::Io(format!(
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        )));
    }
    let max = (std::mem::size_of::<libc::cpu_set_t>() * 8).min(MAX_CPU + 1);
    // SAFETY: CPU_ISSET only reads the set, and cpu < the set's bit size.
    let cpus: Vec<usize> = (0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cpus.is_empty() {
        return Err(RuntimeError::Io(
            "the process affinity mask is empty".into(),
        ));
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_items_and_ranges() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0,2-3").unwrap(), vec![0, 2, 3]);
        assert_eq!(parse_cpu_list(" 3 , 1-2,2").unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn rejects_bad_lists() {
        for bad in [
            "", ",", "1,", "a", "3-1", "1-", "-1", "99999", "0-99999", "+1",
        ] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn available_cpus_is_not_empty() {
        assert!(!available_cpus().unwrap().is_empty());
    }
}
