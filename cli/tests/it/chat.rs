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
