//! # replay-tools
//!
//! The auditors' and operators' command line (billing replay, verify, rebuild). Not
//! built yet: see issue 3.

fn main() {
    println!("replay-tools: not built yet (issue 3)");
}
