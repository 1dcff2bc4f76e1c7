//! Running a node as a service (packaging/): the systemd unit verifies with systemd's own
//! checker; a node speaks the notification protocol to the socket a service manager gives it
//! (ready once it serves, watchdog pings while healthy, stopping at the end); and the udev
//! rule is what lets a member of the group run a node without root: applied by `udevadm
//! test` to a private copy of /dev/userfaultfd (a mount namespace, so the host's device is
//! untouched), it turns a refused start into a working cluster.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ssi_tests::{scratch_dir, secret_file, ssi_dp_bin};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn port() -> u16 {
    ssi_tests::free_port()
}

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    let dir = scratch_dir("unit");
    let text = std::fs::read_to_string(repo().join("packaging/systemd/ssi-dp@.service"))
        .expect("read the unit");
    for must in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "User=ssi-dp",
        "DeviceAllow=/dev/userfaultfd rw",
        "--node-id %i",
    ] {
        assert!(text.contains(must), "the unit lacks {must}");
    }
    // systemd-analyze checks that ExecStart's program exists: point it at this build.
    let unit = dir.join("ssi-dp@.service");
    let bin = ssi_dp_bin();
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/ssi-dp", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("ssi-dp@0.service"))
        .output()
        .expect("run systemd-analyze (Debian: apt-get install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // An unknown key or a bad value is a warning on stderr with exit status 0: both count.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{stderr}",
        out.status
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_node_tells_its_service_manager_it_serves_pings_the_watchdog_and_stops() {
    let dir = scratch_dir("notify");
    let s = secret_file(&dir, "secret", 71);
    let ports = [port(), port()];
    // Each socket read as a service manager does, as the messages come (its queue holds
    // only net.unix.max_dgram_qlen of them); the reader ends when the node's messages stop.
    let sockets: Vec<(PathBuf, std::thread::JoinHandle<Vec<String>>)> = (0..2)
        .map(|id| {
            let p = dir.join(format!("notify{id}.sock"));
            let sock = UnixDatagram::bind(&p).expect("bind a notification socket");
            sock.set_read_timeout(Some(Duration::from_secs(90)))
                .unwrap();
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while let Ok(n) = sock.recv(&mut buf) {
                    let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let last = m.starts_with("STOPPING=1");
                    got.push(m);
                    if last {
                        break;
                    }
                }
                got
            });
            (p, reader)
        })
        .collect();
    let handles: Vec<_> = (0..2u16)
        .map(|id| {
            let mut c = ssi_tests::pair_node(id, ports, &s);
            c.args([
                "--workload",
                "counters",
                "--ops",
                "200",
                "--linger-secs",
                "2",
            ])
            .env("NOTIFY_SOCKET", &sockets[id as usize].0)
            // Pings every 100 ms: at least ten over the 2 s of lingering.
            .env("WATCHDOG_USEC", "200000")
            .env_remove("WATCHDOG_PID");
            std::thread::spawn(move || c.output().expect("run ssi-dp"))
        })
        .collect();
    let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let received: Vec<Vec<String>> = sockets
        .into_iter()
        .map(|(_, r)| r.join().unwrap())
        .collect();
    for (id, o) in outs.iter().enumerate() {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "node {id}:\n{stderr}");
        assert!(stderr.contains("watchdog pinged every 100 ms"), "{stderr}");
        let got = &received[id];
        let ready = got
            .iter()
            .position(|m| m.starts_with("READY=1\n"))
            .unwrap_or_else(|| panic!("node {id} never said READY=1: {got:?}"));
        assert!(
            got[ready].contains(&format!("STATUS=node {id} serving in a cluster of 2")),
            "{got:?}"
        );
        let last = got.last().unwrap();
        assert!(
            last.starts_with("STOPPING=1\n") && last.contains("exit code 0"),
            "node {id} ended with {last:?}"
        );
        let pings = got[ready..].iter().filter(|m| *m == "WATCHDOG=1\n").count();
        assert!(pings >= 10, "node {id}: {pings} watchdog pings: {got:?}");
    }
    // A socket address that is neither a path nor @name is a usage error before anything
    // starts.
    let o = Command::new(ssi_dp_bin())
        .args(["--node-id", "0", "--listen", "127.0.0.1:1"])
        .env("NOTIFY_SOCKET", "relative.sock")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("NOTIFY_SOCKET"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `script` with bash in a new mount namespace whose mounts do not propagate back.
fn in_mount_namespace(script: &str) -> std::process::Output {
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-euc",
            script,
        ])
        .output()
        .expect("run unshare (util-linux)")
}

#[test]
fn the_udev_rule_lets_the_ssi_dp_group_run_nodes_without_root() {
    // A directory every user can reach (the binary and the secret are read as nobody).
    let dir = PathBuf::from(format!("/tmp/ssi-dp-udev-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("ssi-dp");
    std::fs::copy(ssi_dp_bin(), &bin).unwrap();
    let secret = secret_file(&dir, "secret", 72);
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let rule = repo().join("packaging/udev/70-ssi-dp.rules");
    // The group the rule names, given a number of ours in a private /etc/group.
    const GID: u32 = 4242;
    let run_nodes = |tag: &str| -> String {
        let p = [port(), port()];
        let mut s = String::new();
        for id in 0..2 {
            s += &format!(
                "setpriv --reuid 65534 --regid 65534 --groups {GID} {bin} --node-id {id} \
                 --listen 127.0.0.1:{} --peer {}@127.0.0.1:{} --memory 16M --idle block \
                 --cluster-secret-file {secret} --workload counters --ops 100 \
                 --connect-timeout 20 > {dir}/{tag}{id}.out 2>&1 & pids[{id}]=$!\n",
                p[id],
                1 - id,
                p[1 - id],
                bin = bin.display(),
                secret = secret.display(),
                dir = dir.display(),
            );
        }
        s += &format!(
            "rc0=0; wait ${{pids[0]}} || rc0=$?; rc1=0; wait ${{pids[1]}} || rc1=$?\n\
             echo \"{tag} $rc0 $rc1\"\n"
        );
        s
    };
    let script = format!(
        "d={dir}\n\
         mkdir -p $d/dev $d/udev\n\
         mount -t tmpfs -o mode=0755 none $d/dev\n\
         mknod -m 0600 $d/dev/userfaultfd c 10 257\n\
         mount --bind $d/dev/userfaultfd /dev/userfaultfd\n\
         {before}\
         cp /etc/group $d/group && echo 'ssi-dp:x:{GID}:' >> $d/group\n\
         mount --bind $d/group /etc/group\n\
         mount -t tmpfs none /run/udev 2>/dev/null || {{ mkdir -p /run/udev && mount -t tmpfs none /run/udev; }}\n\
         mkdir -p /run/udev/rules.d && cp {rule} /run/udev/rules.d/\n\
         udevadm test --action=add /sys/class/misc/userfaultfd > $d/udevadm.out 2>&1\n\
         stat -c 'device %a %g' /dev/userfaultfd\n\
         {after}",
        dir = dir.display(),
        rule = rule.display(),
        before = run_nodes("before"),
        after = run_nodes("after"),
    );
    let out = in_mount_namespace(&script);
    let said = String::from_utf8_lossy(&out.stdout);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let context = format!(
        "{said}\n{}\nudevadm:\n{}\nbefore0:\n{}\nafter0:\n{}\nafter1:\n{}",
        String::from_utf8_lossy(&out.stderr),
        read("udevadm.out"),
        read("before0.out"),
        read("after0.out"),
        read("after1.out")
    );
    assert!(out.status.success(), "{context}");
    // Before the rule: the device is root's alone, and a node says what to do.
    assert!(said.contains("before 2 2"), "{context}");
    assert!(
        read("before0.out").contains("userfaultfd is not permitted"),
        "{context}"
    );
    // The rule gives the group read and write, and both nodes run the workload as nobody.
    assert!(said.contains(&format!("device 660 {GID}")), "{context}");
    assert!(said.contains("after 0 0"), "{context}");
    assert!(
        read("after0.out").contains("workload counters: OK"),
        "{context}"
    );
    // The host's own device was not touched.
    let meta = std::fs::metadata("/dev/userfaultfd").unwrap();
    assert_ne!(
        std::os::unix::fs::MetadataExt::gid(&meta),
        GID,
        "the host's /dev/userfaultfd changed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The container recipe cannot be built here (no registry for its base images), so its parts
/// that can be checked are: the build stage's commands after `cargo build` run against this
/// build with `/out` in a scratch directory, and every file the final stage copies from the
/// build stage is one those commands made.
#[test]
fn the_container_recipe_runs_its_commands_against_this_build() {
    let text = std::fs::read_to_string(repo().join("packaging/oci/Containerfile"))
        .expect("read the Containerfile");
    let out = scratch_dir("oci").join("out");
    // Instructions with their continuation lines joined.
    let joined = text.replace("\\\n", " ");
    let instructions: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let build_run = instructions
        .iter()
        .find(|l| l.starts_with("RUN cargo build"))
        .expect("a RUN cargo build step");
    assert!(build_run.contains("-p ssi-dp"), "{build_run}");
    // Every command of that step after the build itself, with this build's binary.
    let bin = ssi_dp_bin();
    let commands: Vec<String> = build_run["RUN ".len()..]
        .split("&&")
        .map(str::trim)
        .filter(|c| !c.starts_with("cargo build"))
        .map(|c| {
            c.replace("target/release/ssi-dp", bin.to_str().unwrap())
                .replace("/out", out.to_str().unwrap())
        })
        .collect();
    assert!(commands.len() >= 3, "{commands:?}");
    for c in &commands {
        let o = Command::new("bash").args(["-euc", c]).output().unwrap();
        assert!(
            o.status.success(),
            "{c}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let copies: Vec<&str> = instructions
        .iter()
        .filter_map(|l| l.strip_prefix("COPY --from=build "))
        .collect();
    assert!(copies.len() >= 3, "{copies:?}");
    for c in copies {
        let src = c.split_whitespace().next().unwrap();
        let made = Path::new(&src.replace("/out", out.to_str().unwrap())).to_path_buf();
        assert!(
            made.exists(),
            "the final stage copies {src}, which the build did not make"
        );
    }
    assert!(out.join("man/ssi-dp.1").exists());
    let entry = instructions
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("an ENTRYPOINT");
    assert!(entry.contains("/usr/local/bin/ssi-dp"), "{entry}");
    assert!(text.contains("COPY --from=build /out/ssi-dp /usr/local/bin/ssi-dp"));
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}
