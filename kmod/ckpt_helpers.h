/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C helpers of the ckpt module: prototypes. The Rust side declares the same functions in
 * kmod/helpers/ (task.rs, mm.rs, file.rs); keep the two in step.
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

/* Mirrors CkptMmLayout in abi/src/abi.rs (checked by BUILD_BUG_ON in ckpt_helpers.c). */
#define CKPT_AUXV_WORDS 64
struct ckpt_mm_layout {
	u64 start_code, end_code, start_data, end_data, start_brk, brk, start_stack;
	u64 arg_start, arg_end, env_start, env_end;
	u64 auxv[CKPT_AUXV_WORDS];
};

/* Mirrors CkptSigaction. */
struct ckpt_sigaction {
	u64 handler, flags, restorer, mask;
};

struct ckpt_task_misc {
	u64 clear_child_tid, sas_ss_sp, sas_ss_size;
	u32 sas_ss_flags, personality;
};

struct mm_struct;
struct file;

void ckpt_helper_c_layout(struct ckpt_c_layout *out);
void ckpt_helper_mm_get_layout(struct mm_struct *mm, struct ckpt_mm_layout *out);
void ckpt_helper_mm_set_layout(struct mm_struct *mm, const struct ckpt_mm_layout *in);
bool ckpt_helper_mm_sole_user(struct mm_struct *mm);
bool ckpt_helper_traced_by_current(struct task_struct *task);
bool ckpt_helper_may_open_as_group(u32 gid);
void ckpt_helper_task_misc(struct task_struct *task, struct ckpt_task_misc *out);
int ckpt_helper_get_sigactions(struct task_struct *task, struct ckpt_sigaction *out, u32 count);
int ckpt_helper_itimers_armed(struct task_struct *task);
s64 ckpt_helper_file_size(struct file *file);
struct page;
bool ckpt_helper_hash_page(struct page *page, bool skip_zero, void *hash);
/* In Rust (kmod/helpers/file.rs): feeds a mapped page to the running XXH64 at @hash. */
void ckpt_rust_hash_page(void *hash, const void *page);
void ckpt_helper_put_page(struct page *page);
bool ckpt_helper_file_can(struct file *file, bool read, bool write);
bool ckpt_helper_task_still_dumpable(struct task_struct *task);
bool ckpt_helper_fatal_signal_pending(struct task_struct *task);

#endif
