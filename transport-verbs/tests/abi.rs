//! The declarations of `src/ffi.rs` against rdma-core's own header: `abi/layout.c` is compiled
//! against `infiniband/verbs.h` and prints every size, offset and constant the Rust side
//! declares; each must match. The header comes from `libibverbs-dev` (`scripts/test`
//! installs it, so CI always checks); `VERBS_INCLUDE` names another include directory.
//! Without a header and outside CI the test says so and checks nothing else.

use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use transport_verbs::ffi::*;

fn rust_side() -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: usize| {
        m.insert(k.to_string(), v as i64);
    };
    put("size ibv_context_ops", size_of::<IbvContextOps>());
    put(
        "offset ibv_context_ops.poll_cq",
        offset_of!(IbvContextOps, poll_cq),
    );
    put(
        "offset ibv_context_ops.req_notify_cq",
        offset_of!(IbvContextOps, req_notify_cq),
    );
    put(
        "offset ibv_context_ops.post_send",
        offset_of!(IbvContextOps, post_send),
    );
    put(
        "offset ibv_context_ops.post_recv",
        offset_of!(IbvContextOps, post_recv),
    );
    put("size ibv_context", size_of::<IbvContext>());
    put("offset ibv_context.ops", offset_of!(IbvContext, ops));
    put("offset ibv_context.cmd_fd", offset_of!(IbvContext, cmd_fd));
    put(
        "offset ibv_context.num_comp_vectors",
        offset_of!(IbvContext, num_comp_vectors),
    );
    put("size ibv_comp_channel", size_of::<IbvCompChannel>());
    put("offset ibv_comp_channel.fd", offset_of!(IbvCompChannel, fd));
    put("size ibv_cq", size_of::<IbvCq>());
    put("offset ibv_cq.channel", offset_of!(IbvCq, channel));
    put("offset ibv_cq.cqe", offset_of!(IbvCq, cqe));
    put("size ibv_mr", size_of::<IbvMr>());
    put("offset ibv_mr.addr", offset_of!(IbvMr, addr));
    put("offset ibv_mr.length", offset_of!(IbvMr, length));
    put("offset ibv_mr.lkey", offset_of!(IbvMr, lkey));
    put("offset ibv_mr.rkey", offset_of!(IbvMr, rkey));
    put("size ibv_qp", size_of::<IbvQp>());
    put("offset ibv_qp.qp_num", offset_of!(IbvQp, qp_num));
    put("offset ibv_qp.state", offset_of!(IbvQp, state));
    put("offset ibv_qp.qp_type", offset_of!(IbvQp, qp_type));
    put("size ibv_sge", size_of::<IbvSge>());
    put("offset ibv_sge.lkey", offset_of!(IbvSge, lkey));
    put("size ibv_send_wr", size_of::<IbvSendWr>());
    put("offset ibv_send_wr.sg_list", offset_of!(IbvSendWr, sg_list));
    put("offset ibv_send_wr.num_sge", offset_of!(IbvSendWr, num_sge));
    put("offset ibv_send_wr.opcode", offset_of!(IbvSendWr, opcode));
    put(
        "offset ibv_send_wr.send_flags",
        offset_of!(IbvSendWr, send_flags),
    );
    put(
        "offset ibv_send_wr.imm_data",
        offset_of!(IbvSendWr, imm_data),
    );
    put(
        "offset ibv_send_wr.wr.rdma.remote_addr",
        offset_of!(IbvSendWr, wr),
    );
    put(
        "offset ibv_send_wr.wr.rdma.rkey",
        offset_of!(IbvSendWr, wr) + 8,
    );
    put("offset ibv_send_wr.qp_type", offset_of!(IbvSendWr, qp_type));
    put("offset ibv_send_wr.tso", offset_of!(IbvSendWr, bind_or_tso));
    put("size ibv_recv_wr", size_of::<IbvRecvWr>());
    put("offset ibv_recv_wr.num_sge", offset_of!(IbvRecvWr, num_sge));
    put("size ibv_wc", size_of::<IbvWc>());
    put("offset ibv_wc.status", offset_of!(IbvWc, status));
    put("offset ibv_wc.opcode", offset_of!(IbvWc, opcode));
    put("offset ibv_wc.byte_len", offset_of!(IbvWc, byte_len));
    put("offset ibv_wc.imm_data", offset_of!(IbvWc, imm_data));
    put("offset ibv_wc.qp_num", offset_of!(IbvWc, qp_num));
    put("offset ibv_wc.wc_flags", offset_of!(IbvWc, wc_flags));
    put("offset ibv_wc.sl", offset_of!(IbvWc, sl));
    put("size ibv_global_route", size_of::<IbvGlobalRoute>());
    put(
        "offset ibv_global_route.flow_label",
        offset_of!(IbvGlobalRoute, flow_label),
    );
    put(
        "offset ibv_global_route.sgid_index",
        offset_of!(IbvGlobalRoute, sgid_index),
    );
    put("size ibv_ah_attr", size_of::<IbvAhAttr>());
    put("offset ibv_ah_attr.dlid", offset_of!(IbvAhAttr, dlid));
    put(
        "offset ibv_ah_attr.is_global",
        offset_of!(IbvAhAttr, is_global),
    );
    put(
        "offset ibv_ah_attr.port_num",
        offset_of!(IbvAhAttr, port_num),
    );
    put("size ibv_qp_cap", size_of::<IbvQpCap>());
    put("size ibv_qp_init_attr", size_of::<IbvQpInitAttr>());
    put(
        "offset ibv_qp_init_attr.cap",
        offset_of!(IbvQpInitAttr, cap),
    );
    put(
        "offset ibv_qp_init_attr.qp_type",
        offset_of!(IbvQpInitAttr, qp_type),
    );
    put(
        "offset ibv_qp_init_attr.sq_sig_all",
        offset_of!(IbvQpInitAttr, sq_sig_all),
    );
    put("size ibv_qp_attr", size_of::<IbvQpAttr>());
    put(
        "offset ibv_qp_attr.dest_qp_num",
        offset_of!(IbvQpAttr, dest_qp_num),
    );
    put(
        "offset ibv_qp_attr.qp_access_flags",
        offset_of!(IbvQpAttr, qp_access_flags),
    );
    put("offset ibv_qp_attr.cap", offset_of!(IbvQpAttr, cap));
    put("offset ibv_qp_attr.ah_attr", offset_of!(IbvQpAttr, ah_attr));
    put(
        "offset ibv_qp_attr.alt_ah_attr",
        offset_of!(IbvQpAttr, alt_ah_attr),
    );
    put(
        "offset ibv_qp_attr.pkey_index",
        offset_of!(IbvQpAttr, pkey_index),
    );
    put(
        "offset ibv_qp_attr.max_rd_atomic",
        offset_of!(IbvQpAttr, max_rd_atomic),
    );
    put(
        "offset ibv_qp_attr.max_dest_rd_atomic",
        offset_of!(IbvQpAttr, max_dest_rd_atomic),
    );
    put(
        "offset ibv_qp_attr.port_num",
        offset_of!(IbvQpAttr, port_num),
    );
    put(
        "offset ibv_qp_attr.rnr_retry",
        offset_of!(IbvQpAttr, rnr_retry),
    );
    put(
        "offset ibv_qp_attr.rate_limit",
        offset_of!(IbvQpAttr, rate_limit),
    );
    put("size ibv_port_attr", size_of::<IbvPortAttr>());
    put(
        "offset ibv_port_attr.active_mtu",
        offset_of!(IbvPortAttr, active_mtu),
    );
    put("offset ibv_port_attr.lid", offset_of!(IbvPortAttr, lid));
    put(
        "offset ibv_port_attr.link_layer",
        offset_of!(IbvPortAttr, link_layer),
    );
    put(
        "offset ibv_port_attr.port_cap_flags2",
        offset_of!(IbvPortAttr, port_cap_flags2),
    );
    put("size ibv_gid", size_of::<IbvGid>());
    put("align ibv_gid", align_of::<IbvGid>());
    let consts: [(&str, i64); 43] = [
        ("IBV_QPT_RC", IBV_QPT_RC.into()),
        ("IBV_QPS_RESET", IBV_QPS_RESET.into()),
        ("IBV_QPS_INIT", IBV_QPS_INIT.into()),
        ("IBV_QPS_RTR", IBV_QPS_RTR.into()),
        ("IBV_QPS_RTS", IBV_QPS_RTS.into()),
        ("IBV_QPS_ERR", IBV_QPS_ERR.into()),
        ("IBV_QP_STATE", IBV_QP_STATE.into()),
        ("IBV_QP_ACCESS_FLAGS", IBV_QP_ACCESS_FLAGS.into()),
        ("IBV_QP_PKEY_INDEX", IBV_QP_PKEY_INDEX.into()),
        ("IBV_QP_PORT", IBV_QP_PORT.into()),
        ("IBV_QP_AV", IBV_QP_AV.into()),
        ("IBV_QP_PATH_MTU", IBV_QP_PATH_MTU.into()),
        ("IBV_QP_TIMEOUT", IBV_QP_TIMEOUT.into()),
        ("IBV_QP_RETRY_CNT", IBV_QP_RETRY_CNT.into()),
        ("IBV_QP_RNR_RETRY", IBV_QP_RNR_RETRY.into()),
        ("IBV_QP_RQ_PSN", IBV_QP_RQ_PSN.into()),
        ("IBV_QP_MAX_QP_RD_ATOMIC", IBV_QP_MAX_QP_RD_ATOMIC.into()),
        ("IBV_QP_MIN_RNR_TIMER", IBV_QP_MIN_RNR_TIMER.into()),
        ("IBV_QP_SQ_PSN", IBV_QP_SQ_PSN.into()),
        (
            "IBV_QP_MAX_DEST_RD_ATOMIC",
            IBV_QP_MAX_DEST_RD_ATOMIC.into(),
        ),
        ("IBV_QP_DEST_QPN", IBV_QP_DEST_QPN.into()),
        ("IBV_ACCESS_LOCAL_WRITE", IBV_ACCESS_LOCAL_WRITE.into()),
        ("IBV_ACCESS_REMOTE_WRITE", IBV_ACCESS_REMOTE_WRITE.into()),
        ("IBV_ACCESS_REMOTE_READ", IBV_ACCESS_REMOTE_READ.into()),
        ("IBV_WR_RDMA_WRITE", IBV_WR_RDMA_WRITE.into()),
        (
            "IBV_WR_RDMA_WRITE_WITH_IMM",
            IBV_WR_RDMA_WRITE_WITH_IMM.into(),
        ),
        ("IBV_WR_SEND", IBV_WR_SEND.into()),
        ("IBV_WR_SEND_WITH_IMM", IBV_WR_SEND_WITH_IMM.into()),
        ("IBV_WC_WITH_IMM", IBV_WC_WITH_IMM.into()),
        ("IBV_WR_RDMA_READ", IBV_WR_RDMA_READ.into()),
        ("IBV_SEND_SIGNALED", IBV_SEND_SIGNALED.into()),
        ("IBV_SEND_INLINE", IBV_SEND_INLINE.into()),
        ("IBV_WC_SUCCESS", IBV_WC_SUCCESS.into()),
        ("IBV_WC_SEND", IBV_WC_SEND.into()),
        ("IBV_WC_RDMA_WRITE", IBV_WC_RDMA_WRITE.into()),
        ("IBV_WC_RDMA_READ", IBV_WC_RDMA_READ.into()),
        ("IBV_WC_RECV", IBV_WC_RECV.into()),
        (
            "IBV_WC_RECV_RDMA_WITH_IMM",
            IBV_WC_RECV_RDMA_WITH_IMM.into(),
        ),
        ("IBV_MTU_1024", IBV_MTU_1024.into()),
        ("IBV_MTU_4096", IBV_MTU_4096.into()),
        ("IBV_PORT_ACTIVE", IBV_PORT_ACTIVE.into()),
        (
            "IBV_LINK_LAYER_INFINIBAND",
            IBV_LINK_LAYER_INFINIBAND.into(),
        ),
        ("IBV_LINK_LAYER_ETHERNET", IBV_LINK_LAYER_ETHERNET.into()),
    ];
    for (k, v) in consts {
        m.insert(format!("const {k}"), v);
    }
    m
}

fn include_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("VERBS_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    dir.join("infiniband/verbs.h").exists().then_some(dir)
}

#[test]
fn declarations_match_rdma_cores_header() {
    let Some(inc) = include_dir() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must check the verbs ABI: install libibverbs-dev (scripts/test does)"
        );
        eprintln!("no infiniband/verbs.h (install libibverbs-dev): the ABI was not checked");
        return;
    };
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/abi/layout.c");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("verbs-layout");
    let cc = Command::new("cc")
        .arg("-I")
        .arg(&inc)
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("run cc");
    assert!(
        cc.status.success(),
        "compiling {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&cc.stderr)
    );
    let run = Command::new(&out).output().expect("run the layout program");
    assert!(run.status.success());
    let text = String::from_utf8(run.stdout).expect("ascii output");
    let ours = rust_side();
    let mut seen = 0;
    for line in text.lines() {
        let (key, value) = line.rsplit_once(' ').expect("name value");
        let value: i64 = value.parse().expect("a number");
        let rust = ours
            .get(key)
            .unwrap_or_else(|| panic!("{key} is printed by layout.c but not declared here"));
        assert_eq!(
            *rust, value,
            "{key}: src/ffi.rs has {rust}, verbs.h {value}"
        );
        seen += 1;
    }
    assert_eq!(seen, ours.len(), "every declaration is checked:\n{text}");
}
