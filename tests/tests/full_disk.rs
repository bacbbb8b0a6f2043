//! A disk that fills up during a run (issue #10, point 2), at the process level: the run
//! directory is on a small tmpfs, and once the first checkpoint is written the test fills the
//! filesystem to within a little room (enough for log and metrics lines, not for a checkpoint).
//! With `algorithm.on_checkpoint_error = "stop"` the learner stops with an error that names the
//! setting, no half-written checkpoint is left, and `latest` names an intact checkpoint; with
//! `"continue"` it logs the failure and trains on, and once the test frees the space the final
//! checkpoint is written. Needs root to mount the tmpfs; elsewhere it says so and passes.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use paretopo_tests::run::{
    TestRun, expect_clean_exit, learner_status, start_run, verify_manifest, wait_until,
};

/// A tmpfs mounted for the life of the value.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(megabytes: u32) -> Option<SmallDisk> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            .is_some_and(|uid| uid == "0");
        if !root {
            return None;
        }
        let dir = tempfile::tempdir().expect("mount point");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(mounted.success(), "mount a {megabytes} MB tmpfs");
        Some(SmallDisk(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Fills the filesystem, then gives `room` bytes back; returns the filler's path.
    fn fill_leaving(&self, room: u64) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0xa5u8; 64 << 10];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.flush();
        let len = file.metadata().expect("filler size").len();
        file.set_len(len.saturating_sub(room)).expect("give room back");
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

fn latest(run: &TestRun) -> Option<String> {
    std::fs::read_to_string(run.path().join("checkpoints/latest")).ok().map(|s| s.trim().into())
}

fn leftovers(run: &TestRun) -> Vec<String> {
    std::fs::read_dir(run.path().join("checkpoints"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_run_cleanly_or_lets_it_train_on_as_configured() {
    let Some(disk) = SmallDisk::mount(96) else {
        eprintln!("SKIPPED a_full_disk_...: needs root to mount a small tmpfs");
        return;
    };

    // "stop": the learner ends with the error, the previous checkpoint intact.
    let run = TestRun::in_dir(
        disk.path(),
        4,
        400,
        &["algorithm.checkpoint_every=2", "algorithm.on_checkpoint_error=\"stop\""],
    );
    let (_coordinator, _tool_server, mut learner, _actors) = start_run(&run, 2).await;
    wait_until(&run, "the first checkpoint", Duration::from_secs(120), || async {
        latest(&run).is_some()
    })
    .await;
    let filler = disk.fill_leaving(512 << 10);
    let exited = learner.wait_exit(Duration::from_secs(120));
    let (status, _) = exited.unwrap_or_else(|| panic!("the learner still runs\n{}", run.logs()));
    assert!(!status.success(), "a failed checkpoint with \"stop\" is an error exit");
    let log = std::fs::read_to_string(run.log("learner")).expect("log");
    assert!(
        log.contains("the checkpoint could not be written, so the run stops"),
        "{}",
        run.logs()
    );
    let kept = latest(&run).expect("latest");
    verify_manifest(&run.path().join("checkpoints").join(&kept));
    assert!(leftovers(&run).is_empty(), "a half checkpoint was left: {:?}", leftovers(&run));
    drop((_coordinator, _tool_server, _actors));
    std::fs::remove_file(&filler).expect("free the space");

    // "continue": the learner logs the failure, trains on, and checkpoints once there is room.
    let run = TestRun::in_dir(
        disk.path(),
        4,
        30,
        &["algorithm.checkpoint_every=2", "algorithm.on_checkpoint_error=\"continue\""],
    );
    let (_coordinator, _tool_server, mut learner, _actors) = start_run(&run, 2).await;
    wait_until(&run, "the first checkpoint", Duration::from_secs(120), || async {
        latest(&run).is_some()
    })
    .await;
    let filler = disk.fill_leaving(512 << 10);
    let log = run.log("learner");
    wait_until(&run, "a checkpoint failure logged", Duration::from_secs(120), || async {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("checkpoint not written; training goes on"))
    })
    .await;
    let failed_at = learner_status(&learner).await.step;
    wait_until(&run, "training past the failure", Duration::from_secs(120), || async {
        learner_status(&learner).await.step >= failed_at + 2
    })
    .await;
    std::fs::remove_file(&filler).expect("free the space");
    expect_clean_exit(&run, &mut learner, Duration::from_secs(180));
    assert_eq!(latest(&run).as_deref(), Some("step-30"));
    verify_manifest(&run.path().join("checkpoints/step-30"));
    assert!(leftovers(&run).is_empty(), "{:?}", leftovers(&run));
}
