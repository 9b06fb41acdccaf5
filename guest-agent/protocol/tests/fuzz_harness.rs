//! The protocol decoders' fuzzing harness (`husk_protocol::fuzzing`, the fuzz target
//! `protocol_decode`) over hand-written hostile inputs, and the fuzzer's regressions:
//! no decoder may panic, and what decodes must survive a round trip.

use husk_protocol::fuzzing::{decode, frame, Summary};
use husk_protocol::{MAX_FRAME_LEN, PROTOCOL_VERSION};

/// An input: the read size byte, then the frames.
fn input(chunk: u8, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![chunk];
    for f in frames {
        out.extend_from_slice(f);
    }
    out
}

fn control_hello() -> Vec<u8> {
    frame(format!(r#"{{"kind":"control","version":{PROTOCOL_VERSION}}}"#).as_bytes())
}

fn nested(depth: usize) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        br#"{"id":1,"call":{"call":"update_resources","container_id":"c","resources":"#,
    );
    body.extend_from_slice(&vec![b'['; depth]);
    body.extend_from_slice(&vec![b']'; depth]);
    body.extend_from_slice(b"}}");
    body
}

#[test]
fn hostile_inputs_are_errors_not_panics() {
    let huge = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes().to_vec();
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        input(0, &[vec![1, 0]]),               // a cut length
        input(3, &[frame(b"{\"kind\"")[..8].to_vec()]), // a cut body
        input(255, std::slice::from_ref(&huge)), // over the limit
        input(7, &[u32::MAX.to_le_bytes().to_vec()]),
        input(1, &[frame(b"not json at all")]),
        input(1, &[frame(br#"{"kind":"control","version":2}"#)]), // wrong version
        input(1, &[frame(br#"{"kind":"control","version":-1}"#)]),
        input(1, &[frame(br#"{"kind":"bogus","version":3}"#)]),
        input(1, &[frame(br#"{"kind":"control","version":3,"extra":[1,2,{"x":null}]}"#)]),
        input(255, &[frame(&[b'['; 100_000])]), // deeply nested hello
        input(
            5,
            &[
                control_hello(),
                frame(&nested(100)),
                frame(&nested(10_000)), // too deep for serde_json: an error
                frame(br#"{"id":18446744073709551615,"call":{"call":"ping"}}"#),
                frame(br#"{"id":-1,"call":{"call":"ping"}}"#),
                frame(br#"{"id":2,"call":{"call":"ping","unknown":"field"}}"#),
                frame(br#"{"id":3,"call":{"call":"signal","container_id":"c","exec_id":null,"signal":99999999999,"all":true}}"#),
                frame(br#"{"id":4,"call":{"call":"resize_terminal","container_id":"c","exec_id":null,"rows":70000,"cols":1}}"#),
                frame(br#"{"id":5,"call":{"call":"update_resources","container_id":"c","resources":{"memory":{"limit":1.5e300},"cpu":{"shares":-1}}}}"#),
                frame(br#"{"id":6,"call":{"call":"update_resources","container_id":"c","resources":{"memory":{"limit":-9223372036854775808}}}}"#),
                frame(br#"{"id":7,"call":{"call":"configure_sandbox","hostname":"\u0000\ud800","dns_servers":[],"dns_search":[],"time_unix_ns":null,"entropy":[256]}}"#),
                frame(br#"{"id":8,"call":{"call":"create_container","container_id":"c","spec":{"ociVersion":[]},"rootfs":{"kind":"directory","path":"rel"},"stdio":{"stdin":true,"stdout":true,"stderr":true,"terminal":true}}}"#),
                frame(br#"{"id":9,"call":{"call":"exec","container_id":"c","exec_id":"e","process":{"cwd":"/","user":{"uid":4294967296,"gid":0}},"stdio":{"stdin":false,"stdout":false,"stderr":false,"terminal":false}}}"#),
                frame(b"\xff\xfe\x00"),
                frame(b""),
                frame(br#"{"id":10,"call":{"call":"shutdown"}}"#),
                huge,
            ],
        ),
        input(
            2,
            &[
                frame(br#"{"result":{"Ok":{"version":3,"agent_version":"x","cgroups_unavailable":null}}}"#),
                frame(br#"{"type":"response","id":1,"result":{"Ok":{"reply":"pids","pids":[1,-2,2147483648]}}}"#),
                frame(br#"{"type":"response","id":1,"result":{"Err":{"kind":"not_found","message":"no"}}}"#),
                frame(br#"{"type":"event","event":"exited","container_id":"c","exec_id":null,"info":{"status":{"signal":9},"exited_at_ns":1}}"#),
                frame(br#"{"type":"event","event":"log","level":"trace","message":"unknown level"}"#),
            ],
        ),
        input(255, &[frame(br#"{"result":{"Err":{"kind":"version_mismatch","message":"old"}}}"#)]),
        (0u8..=255).collect(),
        vec![0xff; 300],
        vec![0; 300],
    ];
    for case in &cases {
        decode(case);
    }
}

#[test]
fn the_harness_reaches_both_sides() {
    let agent = input(
        3,
        &[
            control_hello(),
            frame(br#"{"id":1,"call":{"call":"ping"}}"#),
            frame(br#"{"id":2,"call":{"call":"update_resources","container_id":"c","resources":{"pids":{"limit":5}}}}"#),
            frame(br#"{"id":3,"call":{"call":"nope"}}"#),
            frame(b"{"),
            frame(br#"{"id":4,"call":{"call":"stats","container_id":"c"}}"#),
        ],
    );
    let summary = decode(&agent);
    assert_eq!(
        summary,
        Summary {
            hello: true,
            hello_accepted: true,
            requests: 3,
            bad_requests: 2,
            hello_reply: false,
            server_messages: 0,
        }
    );

    let runtime = input(
        255,
        &[
            frame(br#"{"result":{"Ok":{"version":3,"agent_version":"0.1.0","cgroups_unavailable":"v1"}}}"#),
            frame(br#"{"type":"response","id":3,"result":{"Ok":{"reply":"done"}}}"#),
            frame(br#"{"type":"event","event":"oom","container_id":"c"}"#),
            frame(br#"{"type":"event","event":"bogus"}"#),
            frame(br#"{"type":"event","event":"oom","container_id":"never read"}"#),
        ],
    );
    let summary = decode(&runtime);
    assert!(summary.hello_reply);
    assert_eq!(summary.server_messages, 2);
}

/// Every input in `fuzz/regressions/protocol_decode/` (inputs that once found a bug).
#[test]
fn fuzz_regressions_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions/protocol_decode");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("the regressions belong to the repository") {
        let path = entry.expect("listing regressions").path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        decode(&std::fs::read(&path).expect("reading a regression"));
        replayed += 1;
    }
    eprintln!(
        "replayed {replayed} regression inputs from {}",
        dir.display()
    );
}
