/* Prints the sizes, offsets and constants of rdma-core's verbs.h that transport-verbs
 * declares in src/ffi.rs, one "name value" per line; tests/abi.rs compares them. */
#include <stddef.h>
#include <stdio.h>
#include <infiniband/verbs.h>

#define SIZE(t) printf("size %s %zu\n", #t, sizeof(struct t))
#define OFF(t, f) printf("offset %s.%s %zu\n", #t, #f, offsetof(struct t, f))
#define CONST(c) printf("const %s %lld\n", #c, (long long)(c))

int main(void)
{
	SIZE(ibv_context_ops);
	OFF(ibv_context_ops, poll_cq);
	OFF(ibv_context_ops, req_notify_cq);
	OFF(ibv_context_ops, post_send);
	OFF(ibv_context_ops, post_recv);
	SIZE(ibv_context);
	OFF(ibv_context, ops);
	OFF(ibv_context, cmd_fd);
	OFF(ibv_context, num_comp_vectors);
	SIZE(ibv_comp_channel);
	OFF(ibv_comp_channel, fd);
	SIZE(ibv_cq);
	OFF(ibv_cq, channel);
	OFF(ibv_cq, cqe);
	SIZE(ibv_mr);
	OFF(ibv_mr, addr);
	OFF(ibv_mr, length);
	OFF(ibv_mr, lkey);
	OFF(ibv_mr, rkey);
	SIZE(ibv_qp);
	OFF(ibv_qp, qp_num);
	OFF(ibv_qp, state);
	OFF(ibv_qp, qp_type);
	SIZE(ibv_sge);
	OFF(ibv_sge, lkey);
	SIZE(ibv_send_wr);
	OFF(ibv_send_wr, sg_list);
	OFF(ibv_send_wr, num_sge);
	OFF(ibv_send_wr, opcode);
	OFF(ibv_send_wr, send_flags);
	OFF(ibv_send_wr, imm_data);
	OFF(ibv_send_wr, wr.rdma.remote_addr);
	OFF(ibv_send_wr, wr.rdma.rkey);
	OFF(ibv_send_wr, qp_type);
	OFF(ibv_send_wr, tso);
	SIZE(ibv_recv_wr);
	OFF(ibv_recv_wr, num_sge);
	SIZE(ibv_wc);
	OFF(ibv_wc, status);
	OFF(ibv_wc, opcode);
	OFF(ibv_wc, byte_len);
	OFF(ibv_wc, imm_data);
	OFF(ibv_wc, qp_num);
	OFF(ibv_wc, wc_flags);
	OFF(ibv_wc, sl);
	SIZE(ibv_global_route);
	OFF(ibv_global_route, flow_label);
	OFF(ibv_global_route, sgid_index);
	SIZE(ibv_ah_attr);
	OFF(ibv_ah_attr, dlid);
	OFF(ibv_ah_attr, is_global);
	OFF(ibv_ah_attr, port_num);
	SIZE(ibv_qp_cap);
	SIZE(ibv_qp_init_attr);
	OFF(ibv_qp_init_attr, cap);
	OFF(ibv_qp_init_attr, qp_type);
	OFF(ibv_qp_init_attr, sq_sig_all);
	SIZE(ibv_qp_attr);
	OFF(ibv_qp_attr, dest_qp_num);
	OFF(ibv_qp_attr, qp_access_flags);
	OFF(ibv_qp_attr, cap);
	OFF(ibv_qp_attr, ah_attr);
	OFF(ibv_qp_attr, alt_ah_attr);
	OFF(ibv_qp_attr, pkey_index);
	OFF(ibv_qp_attr, max_rd_atomic);
	OFF(ibv_qp_attr, max_dest_rd_atomic);
	OFF(ibv_qp_attr, port_num);
	OFF(ibv_qp_attr, rnr_retry);
	OFF(ibv_qp_attr, rate_limit);
	SIZE(ibv_port_attr);
	OFF(ibv_port_attr, active_mtu);
	OFF(ibv_port_attr, lid);
	OFF(ibv_port_attr, link_layer);
	OFF(ibv_port_attr, port_cap_flags2);
	printf("size ibv_gid %zu\n", sizeof(union ibv_gid));
	printf("align ibv_gid %zu\n", _Alignof(union ibv_gid));
	CONST(IBV_QPT_RC);
	CONST(IBV_QPS_RESET);
	CONST(IBV_QPS_INIT);
	CONST(IBV_QPS_RTR);
	CONST(IBV_QPS_RTS);
	CONST(IBV_QPS_ERR);
	CONST(IBV_QP_STATE);
	CONST(IBV_QP_ACCESS_FLAGS);
	CONST(IBV_QP_PKEY_INDEX);
	CONST(IBV_QP_PORT);
	CONST(IBV_QP_AV);
	CONST(IBV_QP_PATH_MTU);
	CONST(IBV_QP_TIMEOUT);
	CONST(IBV_QP_RETRY_CNT);
	CONST(IBV_QP_RNR_RETRY);
	CONST(IBV_QP_RQ_PSN);
	CONST(IBV_QP_MAX_QP_RD_ATOMIC);
	CONST(IBV_QP_MIN_RNR_TIMER);
	CONST(IBV_QP_SQ_PSN);
	CONST(IBV_QP_MAX_DEST_RD_ATOMIC);
	CONST(IBV_QP_DEST_QPN);
	CONST(IBV_ACCESS_LOCAL_WRITE);
	CONST(IBV_ACCESS_REMOTE_WRITE);
	CONST(IBV_ACCESS_REMOTE_READ);
	CONST(IBV_WR_RDMA_WRITE);
	CONST(IBV_WR_RDMA_WRITE_WITH_IMM);
	CONST(IBV_WR_SEND);
	CONST(IBV_WR_SEND_WITH_IMM);
	CONST(IBV_WC_WITH_IMM);
	CONST(IBV_WR_RDMA_READ);
	CONST(IBV_SEND_SIGNALED);
	CONST(IBV_SEND_INLINE);
	CONST(IBV_WC_SUCCESS);
	CONST(IBV_WC_SEND);
	CONST(IBV_WC_RDMA_WRITE);
	CONST(IBV_WC_RDMA_READ);
	CONST(IBV_WC_RECV);
	CONST(IBV_WC_RECV_RDMA_WITH_IMM);
	CONST(IBV_MTU_1024);
	CONST(IBV_MTU_4096);
	CONST(IBV_PORT_ACTIVE);
	CONST(IBV_LINK_LAYER_INFINIBAND);
	CONST(IBV_LINK_LAYER_ETHERNET);
	return 0;
}
