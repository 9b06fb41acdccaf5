//! A container's stats in containerd's cgroup v2 format (`io.containerd.cgroups.v2.Metrics`,
//! which `ctr task metrics` and the CRI plugin decode), encoded here: the containerd-shim
//! crate this shim is built on carries only the cgroup v1 message.
//!
//! Field numbers follow containerd's `cgroups/v2/stats/metrics.proto`. The agent reports
//! I/O as totals over every device, so there is one I/O entry, with device 0:0.

use husk_protocol::ContainerStats;

/// The type URL containerd decodes the message by.
pub const TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// `memory.stat` keys and their fields in `MemoryStat`, 1 to 31 in the proto's order.
const MEMORY_STAT_FIELDS: [&str; 31] = [
    "anon",
    "file",
    "kernel_stack",
    "slab",
    "sock",
    "shmem",
    "file_mapped",
    "file_dirty",
    "file_writeback",
    "anon_thp",
    "inactive_anon",
    "active_anon",
    "inactive_file",
    "active_file",
    "unevictable",
    "slab_reclaimable",
    "slab_unreclaimable",
    "pgfault",
    "pgmajfault",
    "workingset_refault",
    "workingset_activate",
    "workingset_nodereclaim",
    "pgrefill",
    "pgscan",
    "pgsteal",
    "pgactivate",
    "pgdeactivate",
    "pglazyfree",
    "pglazyfreed",
    "thp_fault_alloc",
    "thp_collapse_alloc",
];

/// The encoded `Metrics` message.
pub fn encode(stats: &ContainerStats) -> Vec<u8> {
    let mut pids = Message::default();
    pids.uint64(1, stats.pids_current);
    pids.uint64(2, stats.pids_max);

    let mut cpu = Message::default();
    cpu.uint64(1, stats.cpu_usage_usec);
    cpu.uint64(2, stats.cpu_user_usec);
    cpu.uint64(3, stats.cpu_system_usec);
    cpu.uint64(6, stats.cpu_throttled_usec);

    let mut memory = Message::default();
    for (field, key) in (1..).zip(MEMORY_STAT_FIELDS) {
        let value = stats.memory_stat.iter().find(|(k, _)| k == key);
        memory.uint64(field, value.map(|(_, v)| *v));
    }
    memory.uint64(32, stats.memory_current);
    memory.uint64(33, stats.memory_max);

    let mut io_entry = Message::default();
    io_entry.uint64(3, stats.io_read_bytes);
    io_entry.uint64(4, stats.io_write_bytes);
    let mut io = Message::default();
    if !io_entry.bytes.is_empty() {
        io.message(1, &io_entry);
    }

    let mut memory_events = Message::default();
    memory_events.uint64(5, stats.memory_oom_kills);

    let mut metrics = Message::default();
    metrics.message(1, &pids);
    metrics.message(2, &cpu);
    metrics.message(4, &memory);
    metrics.message(6, &io);
    metrics.message(8, &memory_events);
    metrics.bytes
}

/// A protobuf message being written: only the two wire types these messages use.
#[derive(Default)]
struct Message {
    bytes: Vec<u8>,
}

impl Message {
    /// A `uint64` field; absent and zero values are left out, as proto3 does.
    fn uint64(&mut self, field: u32, value: Option<u64>) {
        if let Some(value) = value.filter(|v| *v != 0) {
            self.varint(u64::from(field) << 3);
            self.varint(value);
        }
    }

    /// An embedded message field; an empty one is left out.
    fn message(&mut self, field: u32, message: &Message) {
        if message.bytes.is_empty() {
            return;
        }
        self.varint(u64::from(field) << 3 | 2);
        self.varint(message.bytes.len() as u64);
        self.bytes.extend_from_slice(&message.bytes);
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.bytes.push(value as u8 | 0x80);
            value >>= 7;
        }
        self.bytes.push(value as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_known_is_an_empty_message() {
        assert!(encode(&ContainerStats::default()).is_empty());
    }

    #[test]
    fn fields_land_at_containerds_numbers() {
        let stats = ContainerStats {
            pids_current: Some(3),
            pids_max: Some(10),
            ..ContainerStats::default()
        };
        // Metrics.pids (1, length 4) { current (1) = 3, limit (2) = 10 }
        assert_eq!(encode(&stats), [0x0a, 0x04, 0x08, 0x03, 0x10, 0x0a]);

        let stats = ContainerStats {
            memory_current: Some(300),
            memory_stat: vec![("file".into(), 1), ("thp_collapse_alloc".into(), 2)],
            memory_oom_kills: Some(1),
            io_write_bytes: Some(5),
            ..ContainerStats::default()
        };
        assert_eq!(
            encode(&stats),
            [
                // Metrics.memory (4) { file (2) = 1, thp_collapse_alloc (31) = 2,
                // usage (32) = 300, a two-byte varint tag and value }
                0x22, 0x09, 0x10, 0x01, 0xf8, 0x01, 0x02, 0x80, 0x02, 0xac, 0x02,
                // Metrics.io (6) { usage (1) { wbytes (4) = 5 } }
                0x32, 0x04, 0x0a, 0x02, 0x20, 0x05,
                // Metrics.memory_events (8) { oom_kill (5) = 1 }
                0x42, 0x02, 0x28, 0x01,
            ]
        );
    }
}
