//! Every end-to-end test, in one binary: a binary per file would link the Kubernetes client
//! again for each (~150 MB and a long link apiece). A module's tests are named
//! `<module>::<test>`, so a filter picks a module:
//! `cargo test -p ringmaster-e2e --test e2e -- crds::` (see README.md).

mod agent_support;
mod chart_support;
mod operator_support;

mod agent_footprint;
mod agent_handoff;
mod agent_nodes;
mod agent_staleness;
mod chart_install;
mod chart_lint;
mod crds;
mod demo;
mod faults;
mod harness;
mod monitoring;
mod operator_finalizer;
mod operator_fleet;
mod operator_rbac;
mod operator_read_access;
mod operator_resilience;
mod operator_rollout;
mod operator_trust;
mod own_real_node;
mod rbac_admission;
mod rbac_can_i;
mod real_node;
mod scheduling;
mod settings;
