// SPDX-License-Identifier: GPL-2.0
/*
 * The only C in the ckpt module. Each helper exists because Rust cannot do the job itself:
 *  - ckpt_helper_c_layout(): offsetof() as the C compiler sees it, so that the module can refuse
 *    to load when bindgen's idea of a struct differs (it does on some configs, see
 *    docs/design.md "Kernel").
 *  - ckpt_helper_task_still_dumpable(): task->exec_state is RCU-protected, its type is not in
 *    the Rust bindings and the kernel's accessor is not exported. It mirrors the dumpability
 *    step of __ptrace_may_access() (kernel/ptrace.c).
 * Keep it that small: logic belongs in Rust.
 */
#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/sched/coredump.h>
#include <linux/sched/exec_state.h>
#include <linux/sched/signal.h>
#include <linux/stddef.h>

#include "ckpt_helpers.h"

void ckpt_helper_c_layout(struct ckpt_c_layout *out)
{
	out->task_flags = offsetof(struct task_struct, flags);
	out->task_signal = offsetof(struct task_struct, signal);
	out->task_cred = offsetof(struct task_struct, cred);
	out->signal_nr_threads = offsetof(struct signal_struct, nr_threads);
	out->signal_exec_update_lock = offsetof(struct signal_struct, exec_update_lock);
	out->cred_uid = offsetof(struct cred, uid);
	out->cred_gid = offsetof(struct cred, gid);
	out->cred_suid = offsetof(struct cred, suid);
	out->cred_sgid = offsetof(struct cred, sgid);
	out->cred_euid = offsetof(struct cred, euid);
	out->cred_egid = offsetof(struct cred, egid);
	out->cred_user_ns = offsetof(struct cred, user_ns);
}

bool ckpt_helper_task_still_dumpable(struct task_struct *task)
{
	const struct task_exec_state *exec_state;

	guard(rcu)();
	/* task_exec_state_rcu() is not exported; this is its body minus the lockdep check. */
	exec_state = rcu_dereference(task->exec_state);
	if (!exec_state)
		return false;
	if (READ_ONCE(exec_state->dumpable) == TASK_DUMPABLE_OWNER)
		return true;
	return ns_capable(exec_state->user_ns, CAP_SYS_PTRACE);
}
