/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C helpers of the ckpt module: prototypes. The Rust side declares the same functions in
 * kmod/helpers.rs; keep the two in step.
 */
#ifndef CKPT_HELPERS_H
#define CKPT_HELPERS_H

#include <linux/types.h>

struct task_struct;

/* Offsets of the C struct fields that ckpt's Rust code reads through bindgen's layouts. */
struct ckpt_c_layout {
	u64 task_flags;
	u64 task_signal;
	u64 task_cred;
	u64 signal_nr_threads;
	u64 signal_exec_update_lock;
	u64 cred_uid;
	u64 cred_gid;
	u64 cred_suid;
	u64 cred_sgid;
	u64 cred_euid;
	u64 cred_egid;
	u64 cred_user_ns;
};

void ckpt_helper_c_layout(struct ckpt_c_layout *out);
bool ckpt_helper_task_still_dumpable(struct task_struct *task);

#endif
