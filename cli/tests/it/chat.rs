//! `thinker chat` driven through a pipe.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::{FIXTURES, THINKER};

fn chat(model: &str, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(THINKER)
        .args(["chat", "-m", &format!("{FIXTURES}/{model}"), "-t", "1"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start thinker chat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `(prompt tokens, cached tokens, reply tokens)` of each status line.
fn statuses(stderr: &str) -> Vec<(usize, usize, usize)> {
    stderr
        .lines()
        .filter(|l| l.starts_with("[prompt "))
        .map(|l| {
            let num = |after: &str| -> usize {
                let at = l.find(after).unwrap_or_else(|| panic!("{after:?} in {l}")) + after.len();
                l[at..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            (num("[prompt "), num(" tok ("), num("| reply "))
        })
        .collect()
}

#[test]
fn piped_conversation_with_status_lines() {
    let out = chat(
        "tiny-t1-gguf/tiny-t1-Q8_0.gguf",
        &["-n", "8", "--system", "You are terse."],
        "Hello there\nHow are you?\n/reset\nAgain\n/exit\nnever read\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!out.stdout.is_empty());
    let st = statuses(&stderr);
    assert_eq!(st.len(), 3, "{stderr}");
    for l in stderr.lines().filter(|l| l.starts_with("[prompt ")) {
        for part in ["t/s", "| ctx ", "| KV ", "peak RSS"] {
            assert!(l.contains(part), "{part} missing in {l}");
        }
    }
    assert!(stderr.contains("[conversation cleared]"));
    for (p, _, r) in &st {
        assert!(*p > 0 && *r >= 1 && *r <= 8, "{st:?}");
    }
    // After /reset nothing is reused and the prompt is as short as the first one's.
    assert_eq!(st[2].1, 0);
    assert!(st[1].0 > st[0].0);
}

#[test]
fn turns_reuse_the_kv_cache() {
    // One token per reply: the sampled token is never fed, so the cache holds exactly the
    // previous prompt, which the next rendered conversation extends.
    let out = chat(
        "tiny-t1",
        &["-n", "1"],
        "first message\nsecond message\nthird message\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let st = statuses(&stderr);
    assert_eq!(st.len(), 3, "{stderr}");
    assert_eq!(st[0].1, 0);
    assert_eq!(st[1].1, st[0].0, "{st:?}");
    assert_eq!(st[2].1, st[1].0, "{st:?}");
}

#[test]
fn greedy_chat_is_deterministic() {
    let run = || {
        let out = chat(
            "tiny-t1-gguf/tiny-t1-F32.gguf",
            &["-n", "16", "--temp", "0"],
            "Say something\n",
        );
        assert!(out.status.success());
        out.stdout
    };
    let a = run();
    assert!(a.len() > 1);
    assert_eq!(a, run());
}

#[test]
fn full_context_is_reported_and_the_chat_goes_on() {
    let out = chat(
        "tiny-t1-gguf/tiny-t1-Q8_0.gguf",
        &["-n", "4", "-c", "48"],
        &format!("{}\nshort\n", "many words ".repeat(40)),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("context full"), "{stderr}");
    assert_eq!(statuses(&stderr).len(), 1, "{stderr}");
}

#[test]
fn bad_flags_fail_cleanly() {
    let out = chat("tiny-t1-gguf/tiny-t1-Q8_0.gguf", &["--temp=-1"], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("temperature"), "{err}");
}

#[test]
fn ctrl_c_stops_the_reply_not_the_chat() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let mut child = Command::new(THINKER)
        .args([
            "chat",
            "-m",
            &format!("{FIXTURES}/tiny-t1-gguf/tiny-t1-Q8_0.gguf"),
            "-t",
            "1",
        ])
        // The first reply would run for a second or more (to the end of the context).
        .args(["-n", "30000", "-c", "2048", "--ignore-eos"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start thinker chat");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"Tell me everything\n").unwrap();
    stdin.flush().unwrap();
    // Wait for the reply to start.
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    out.read_exact(&mut first).expect("reply starts");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Then a fresh turn (it runs to the end of the context too), and EOF.
    stdin.write_all(b"/reset\nshort\n").unwrap();
    drop(stdin);
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = out.read_to_end(&mut rest);
    });
    let t0 = Instant::now();
    let code = loop {
        if let Some(c) = child.try_wait().unwrap() {
            break c;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("chat did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(code.success(), "{code:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("[prompt ")).collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].contains("(cancelled)"), "{err}");
    assert!(lines[1].contains("(length)"), "{err}");
}
