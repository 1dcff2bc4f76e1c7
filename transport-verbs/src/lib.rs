//! RDMA verbs transport (behind the `rdma` feature). Not built yet: these machines have no
//! RDMA devices, and every node uses TCP.
