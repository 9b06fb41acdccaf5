//! The agent's OCI spec fuzzing harness (`husk_agent::fuzzing`, the fuzz target
//! `oci_spec`) over hand-written hostile specs, and the fuzzer's regressions: nothing
//! the agent computes from a spec may panic, and an accepted spec must reach the
//! spawn helper unchanged.

use husk_agent::fuzzing::{oci_spec, Summary};

/// A spec the agent accepts, with every part the harness looks at.
const FULL: &str = r#"{
    "ociVersion": "1.0.2",
    "root": {"path": "rootfs", "readonly": true},
    "process": {
        "user": {"uid": 1000, "gid": 1000, "umask": 63, "additionalGids": [5]},
        "args": ["sh", "-c", "true"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "capabilities": {
            "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL"],
            "inheritable": ["CAP_KILL"],
            "ambient": ["CAP_KILL"]
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}],
        "noNewPrivileges": true
    },
    "hostname": "box",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/data", "source": "/srv", "options": ["rbind", "ro", "rprivate"]}
    ],
    "linux": {
        "namespaces": [{"type": "pid"}, {"type": "uts"}, {"type": "mount"}, {"type": "ipc"}],
        "rootfsPropagation": "rslave",
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"],
        "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
        "resources": {
            "memory": {"limit": 104857600, "swap": 209715200},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1"},
            "pids": {"limit": 64},
            "blockIO": {"weight": 500},
            "unified": {"memory.high": "90000000"}
        },
        "seccomp": {
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_NOT_A_THING"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                {"names": ["read", "write", "exit_group", "no_such_call"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 16, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
            ]
        }
    }
}"#;

#[test]
fn the_harness_reaches_every_step() {
    let summary = oci_spec(FULL.as_bytes());
    assert!(summary.json && summary.parsed, "{summary:?}");
    assert!(summary.valid && summary.process_valid, "{summary:?}");
    assert!(summary.seccomp.is_some_and(|n| n > 0), "{summary:?}");
    assert!(
        summary.cgroup_settings.is_some_and(|n| n > 0),
        "{summary:?}"
    );
    assert_eq!(summary.update_resources, Some(summary.cgroup_settings));
}

/// `FULL` with the value at `pointer` replaced (or removed, for `None`).
fn edit(pointer: &str, value: Option<serde_json::Value>) -> Vec<u8> {
    let mut spec: serde_json::Value = serde_json::from_str(FULL).expect("FULL is JSON");
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    let parent = spec.pointer_mut(parent).expect("the parent exists");
    match (parent, value) {
        (serde_json::Value::Object(map), Some(v)) => {
            map.insert(key.to_owned(), v);
        }
        (serde_json::Value::Object(map), None) => {
            map.remove(key);
        }
        (serde_json::Value::Array(list), Some(v)) => {
            list[key.parse::<usize>().expect("an index")] = v
        }
        (serde_json::Value::Array(list), None) => {
            list.remove(key.parse::<usize>().expect("an index"));
        }
        _ => panic!("{pointer}: not in an object or array"),
    }
    serde_json::to_vec(&spec).expect("encoding")
}

#[test]
fn hostile_specs_are_errors_not_panics() {
    use serde_json::json;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_in_spec = format!(
        r#"{{"ociVersion":"1","root":{{"path":"r"}},"annotations":{{"a":{}{}}}}}"#,
        "[".repeat(1_000),
        "]".repeat(1_000)
    );
    let mut cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"not json".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{}".to_vec(),
        deep.into_bytes(),
        deep_in_spec.into_bytes(),
        FULL.as_bytes()[..FULL.len() / 2].to_vec(),
        br#"{"ociVersion":"1","root":{"path":"r"},"unknownField":{"x":[1,2,3]}}"#.to_vec(),
        (0u8..=255).collect(),
    ];
    let edits: Vec<(&str, Option<serde_json::Value>)> = vec![
        ("/process/args", Some(json!([]))),
        ("/process/args", Some(json!(["a\u{0}b"]))),
        ("/process/env", Some(json!(["A=\u{0}"]))),
        ("/process/cwd", Some(json!("relative"))),
        ("/process/user/username", Some(json!("root"))),
        ("/process/user/uid", Some(json!(-1))),
        ("/process/user/uid", Some(json!(4294967296u64))),
        ("/process/user/umask", Some(json!(4294967295u32))),
        (
            "/process/capabilities/ambient",
            Some(json!(["CAP_SYS_ADMIN"])),
        ),
        (
            "/process/capabilities/bounding",
            Some(json!(["CAP_NOT_A_CAP"])),
        ),
        ("/process/rlimits/0/type", Some(json!("RLIMIT_BOGUS"))),
        ("/root", None),
        ("/root/path", Some(json!(""))),
        ("/mounts/0/destination", Some(json!("relative"))),
        ("/mounts/0/destination", Some(json!("/"))),
        ("/mounts/0/type", None),
        (
            "/mounts/0/options",
            Some(json!(["bogus", "size=-1", "mode=99999999999", "=", ""])),
        ),
        ("/mounts/3/options", Some(json!(["bind", "rro", "idmap"]))),
        ("/linux/namespaces", Some(json!([{"type": "user"}]))),
        (
            "/linux/namespaces",
            Some(json!([{"type": "pid"}, {"type": "pid"}])),
        ),
        (
            "/linux/namespaces",
            Some(json!([{"type": "bogus"}, {"type": 7}, {}])),
        ),
        ("/linux/namespaces", Some(json!([]))),
        ("/linux/rootfsPropagation", Some(json!("sideways"))),
        ("/linux/devices/0/type", Some(json!("a"))),
        ("/linux/devices/0/path", Some(json!("fuse"))),
        ("/linux/devices/0/major", Some(json!(-1))),
        ("/linux/maskedPaths/0", Some(json!("proc"))),
        ("/linux/resources/memory/limit", Some(json!(i64::MIN))),
        ("/linux/resources/memory/limit", Some(json!(-2))),
        ("/linux/resources/memory/swap", Some(json!(i64::MAX))),
        ("/linux/resources/memory/reservation", Some(json!(1.5))),
        ("/linux/resources/cpu/shares", Some(json!(u64::MAX))),
        ("/linux/resources/cpu/quota", Some(json!(i64::MIN))),
        ("/linux/resources/cpu/period", Some(json!(0))),
        ("/linux/resources/cpu/cpus", Some(json!("\n../../x"))),
        ("/linux/resources/pids/limit", Some(json!(i64::MIN))),
        ("/linux/resources/blockIO/weight", Some(json!(0))),
        (
            "/linux/resources/unified",
            Some(json!({"../escape": "1", "": "", "a/b": "c", "x": "\n"})),
        ),
        (
            "/linux/resources/hugepageLimits",
            Some(json!([{"pageSize": "../2MB", "limit": 1}])),
        ),
        (
            "/linux/resources/devices",
            Some(json!([{"allow": false, "access": "rwm"}])),
        ),
        (
            "/linux/seccomp/defaultAction",
            Some(json!("SCMP_ACT_EXPLODE")),
        ),
        ("/linux/seccomp/defaultErrnoRet", Some(json!(u32::MAX))),
        ("/linux/seccomp/syscalls/0/action", Some(json!(7))),
        ("/linux/seccomp/syscalls/0/names", Some(json!([]))),
        ("/linux/seccomp/syscalls/1/args/0/index", Some(json!(6))),
        (
            "/linux/seccomp/syscalls/1/args/0/index",
            Some(json!(u64::MAX)),
        ),
        (
            "/linux/seccomp/syscalls/1/args/0/op",
            Some(json!("SCMP_CMP_WHATEVER")),
        ),
        (
            "/linux/seccomp/syscalls/2/args/0/valueTwo",
            Some(json!(u64::MAX)),
        ),
        ("/linux/seccomp/architectures", Some(json!("not a list"))),
        ("/linux/seccomp/flags", Some(json!([1, null]))),
        ("/hostname", Some(json!("x".repeat(100_000)))),
    ];
    for (pointer, value) in edits {
        cases.push(edit(pointer, value));
    }
    // Many seccomp rules with many alternatives: the program must not overflow its jumps.
    let many_args: Vec<serde_json::Value> = (0..6)
        .flat_map(|index| {
            (0..8).map(move |value| json!({"index": index, "value": value, "op": "SCMP_CMP_NE"}))
        })
        .collect();
    let rules: Vec<serde_json::Value> = (0..300)
        .map(|i| json!({"names": ["read", "write", format!("x{i}")], "action": "SCMP_ACT_ERRNO", "args": many_args}))
        .collect();
    cases.push(edit("/linux/seccomp/syscalls", Some(json!(rules))));
    for case in &cases {
        let summary: Summary = oci_spec(case);
        assert!(!summary.valid || summary.parsed);
    }
}

/// Every input in `fuzz/regressions/oci_spec/` (inputs that once found a bug).
#[test]
fn fuzz_regressions_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/oci_spec");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("the regressions belong to the repository") {
        let path = entry.expect("listing regressions").path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        oci_spec(&std::fs::read(&path).expect("reading a regression"));
        replayed += 1;
    }
    eprintln!(
        "replayed {replayed} regression inputs from {}",
        dir.display()
    );
}
