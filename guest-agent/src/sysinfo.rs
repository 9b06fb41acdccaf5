//! What the guest was given, as the kernel reports it: online CPUs, total memory, the
//! kernel command line.

use crate::error::Error;

const CPU_ONLINE: &str = "/sys/devices/system/cpu/online";
const MEMINFO: &str = "/proc/meminfo";
const CMDLINE: &str = "/proc/cmdline";

/// The number of online CPUs.
pub fn online_cpus() -> Result<u64, Error> {
    parse_cpu_list(&read(CPU_ONLINE)?).ok_or(Error::Parse {
        path: CPU_ONLINE,
        what: "not a CPU list",
    })
}

/// `MemTotal` from /proc/meminfo, in KiB.
pub fn mem_total_kib() -> Result<u64, Error> {
    parse_mem_total(&read(MEMINFO)?).ok_or(Error::Parse {
        path: MEMINFO,
        what: "no `MemTotal: <n> kB` line",
    })
}

/// The kernel command line.
pub fn kernel_cmdline() -> Result<String, Error> {
    read(CMDLINE)
}

/// Whether `word` is one of the whitespace-separated words of `cmdline`.
pub fn has_word(cmdline: &str, word: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == word)
}

fn read(path: &'static str) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read { path, source })
}

/// Counts the CPUs of a kernel CPU list such as `0-3,5,7-8`.
fn parse_cpu_list(list: &str) -> Option<u64> {
    let list = list.trim();
    if list.is_empty() {
        return None;
    }
    let mut count = 0u64;
    for range in list.split(',') {
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?),
            None => {
                let cpu = range.parse::<u64>().ok()?;
                (cpu, cpu)
            }
        };
        count = count.checked_add(last.checked_sub(first)?.checked_add(1)?)?;
    }
    Some(count)
}

/// The value of the `MemTotal: <n> kB` line of /proc/meminfo.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("MemTotal:"), Some(n), Some("kB")) => n.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0\n"), Some(1));
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,5,7-8"), Some(7));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("0-x"), None);
        assert_eq!(parse_cpu_list("0,,1"), None);
    }

    #[test]
    fn mem_total() {
        let meminfo = "MemTotal:         245984 kB\nMemFree:          230000 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(245984));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn cmdline_words() {
        let cmdline = "console=ttyS0 reboot=k husk.exit_after_ready\n";
        assert!(has_word(cmdline, "husk.exit_after_ready"));
        assert!(!has_word(
            "husk.exit_after_ready=0",
            "husk.exit_after_ready"
        ));
        assert!(!has_word("xhusk.exit_after_ready", "husk.exit_after_ready"));
    }
}
