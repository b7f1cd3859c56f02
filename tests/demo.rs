//! `remora demo` end to end (the README's run command): the real binary starts the control plane,
//! the sample services and a Remora sidecar, prints the VirtualService path and a split line per
//! second; editing the file's weights from 90/10 to 50/50 moves the printed split to 50 ± 10, and
//! no line reports an error. The demo runs in its own process group, killed at the end.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the demo's whole process group (the demo and its sidecar) on drop.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created (process_group(0) below).
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

fn v1_share(line: &str) -> Option<f64> {
    line.strip_prefix("split: v1")?.trim_start().split('%').next()?.trim().parse().ok()
}

#[test]
fn demo_split_follows_the_virtual_service() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(["demo", "--duration", "9s", "--rate", "300"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn remora demo");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let group = Group(child);
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());

    let deadline = Instant::now() + Duration::from_secs(40);
    let mut lines = Vec::new();
    let mut vs_path: Option<PathBuf> = None;
    let mut edited_after = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else { break };
        eprintln!("{line}");
        if let Some(p) = line.strip_prefix("virtual service: ") {
            vs_path = Some(PathBuf::from(p.trim()));
        }
        let is_split = line.starts_with("split:");
        lines.push(line);
        let splits = lines.iter().filter(|l| l.starts_with("split:")).count();
        if is_split && splits == 2 && edited_after.is_none() {
            // Edit the weights in place, as a user's editor would.
            let path = vs_path.as_ref().expect("virtual service path printed before the split");
            let text = std::fs::read_to_string(path).expect("read virtual service");
            assert!(text.contains("weight: 90") && text.contains("weight: 10"), "{text}");
            let text = text.replace("weight: 90", "weight: 50").replace("weight: 10", "weight: 50");
            std::fs::write(path, text).expect("edit virtual service");
            edited_after = Some(lines.len());
        }
    }
    drop(group);
    let all = lines.join("\n");
    let errors = err_log.join().unwrap_or_default();
    let edited_after = edited_after.unwrap_or_else(|| panic!("no split lines; stdout:\n{all}\nstderr:\n{errors}"));

    let splits: Vec<&String> = lines.iter().filter(|l| l.starts_with("split:")).collect();
    for l in &splits {
        assert!(l.ends_with(", 0 errors)"), "errors reported: {l}\n{all}\n{errors}");
    }
    let before: Vec<f64> = lines[..edited_after].iter().filter_map(|l| v1_share(l)).collect();
    assert!(before.iter().all(|s| (s - 90.0).abs() <= 10.0), "before the edit: {before:?}\n{all}");
    let after: Vec<f64> = lines[edited_after..].iter().filter_map(|l| v1_share(l)).collect();
    assert!(after.len() >= 4, "too few split lines after the edit: {after:?}\n{all}\n{errors}");
    // Within ~1 s of the edit (allowing one partial second) the split is 50/50 and stays there.
    for s in &after[2..] {
        assert!((s - 50.0).abs() <= 10.0, "split did not move to 50/50: {after:?}\n{all}");
    }
    assert!(all.contains("total: ") && all.contains(" 0 errors"), "{all}\n{errors}");
}
