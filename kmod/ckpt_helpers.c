// SPDX-License-Identifier: GPL-2.0
/*
 * The only C in the ckpt module. Each helper exists because Rust cannot do the job itself:
 *  - ckpt_helper_c_layout(): offsetof() as the C compiler sees it, so that the module can refuse
 *    to load when bindgen's idea of a struct differs (it does on some configs, see
 *    docs/design.md "Kernel").
 *  - ckpt_helper_task_still_dumpable(): task->exec_state is RCU-protected, its type is not in
 *    the Rust bindings and the kernel's accessor is not exported. It mirrors the dumpability
 *    step of __ptrace_may_access() (kernel/ptrace.c).
 *  - ckpt_helper_traced_by_current(): ptrace_parent() is an inline that must run under RCU.
 *  - ckpt_helper_may_open_as_group(): current_fsuid() and make_kgid() are inlines.
 *  - ckpt_helper_itimers_armed(): hrtimer_active() is an inline, the locking of the signal
 *    struct (__lock_task_sighand) is not exported.
 * Keep it that small: logic belongs in Rust.
 */
#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/sched/coredump.h>
#include <linux/sched/exec_state.h>
#include <linux/sched/signal.h>
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/mm.h>
#include <linux/mmap_lock.h>
#include <linux/personality.h>
#include <linux/posix-timers.h>
#include <linux/ptrace.h>
#include <linux/uidgid.h>
#include <linux/signal.h>
#include <linux/stddef.h>
#include <linux/time.h>

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

/*
 * Whether the caller is @task's tracer. The tracer may detach and exit at any time, so
 * task->parent is read under RCU (as ptrace_parent() requires) and only compared, never used.
 * A tracer passed ptrace's attach check, every LSM's included (Yama, SELinux, AppArmor), and
 * while it traces @task an exec of a setuid program gains no privilege it could not trace.
 */
bool ckpt_helper_traced_by_current(struct task_struct *task)
{
	guard(rcu)();
	return ptrace_parent(task) == current;
}

/*
 * The permission check of a root-owned node with mode 0660 and group @gid (see
 * generic_permission()), applied at open when the module is loaded with group=GID: the misc
 * device API gives a node a mode but no group, so that node is 0666 and this is its rule.
 */
bool ckpt_helper_may_open_as_group(u32 gid)
{
	if (uid_eq(current_fsuid(), GLOBAL_ROOT_UID))
		return true;
	if (in_group_p(make_kgid(&init_user_ns, gid)))
		return true;
	return capable(CAP_DAC_OVERRIDE);
}

void ckpt_helper_mm_get_layout(struct mm_struct *mm, struct ckpt_mm_layout *out)
{
	unsigned int i;

	BUILD_BUG_ON(AT_VECTOR_SIZE > CKPT_AUXV_WORDS);
	BUILD_BUG_ON(sizeof(struct ckpt_mm_layout) != 8 * (11 + CKPT_AUXV_WORDS));
	memset(out, 0, sizeof(*out));
	mmap_read_lock(mm);
	out->start_code = mm->start_code;
	out->end_code = mm->end_code;
	out->start_data = mm->start_data;
	out->end_data = mm->end_data;
	out->start_brk = mm->start_brk;
	out->brk = mm->brk;
	out->start_stack = mm->start_stack;
	out->arg_start = mm->arg_start;
	out->arg_end = mm->arg_end;
	out->env_start = mm->env_start;
	out->env_end = mm->env_end;
	for (i = 0; i < AT_VECTOR_SIZE; i++)
		out->auxv[i] = mm->saved_auxv[i];
	mmap_read_unlock(mm);
}

/* The caller (Rust) has validated every value; this only stores them. */
void ckpt_helper_mm_set_layout(struct mm_struct *mm, const struct ckpt_mm_layout *in)
{
	unsigned int i;

	mmap_write_lock(mm);
	mm->start_code = in->start_code;
	mm->end_code = in->end_code;
	mm->start_data = in->start_data;
	mm->end_data = in->end_data;
	mm->start_brk = in->start_brk;
	mm->brk = in->brk;
	mm->start_stack = in->start_stack;
	/* arg/env are read by /proc under this lock too (see prctl_set_mm_map()). */
	mm->arg_start = in->arg_start;
	mm->arg_end = in->arg_end;
	mm->env_start = in->env_start;
	mm->env_end = in->env_end;
	for (i = 0; i < AT_VECTOR_SIZE; i++)
		mm->saved_auxv[i] = in->auxv[i];
	mmap_write_unlock(mm);
}

bool ckpt_helper_mm_sole_user(struct mm_struct *mm)
{
	return atomic_read(&mm->mm_users) == 1;
}

void ckpt_helper_task_misc(struct task_struct *task, struct ckpt_task_misc *out)
{
	out->clear_child_tid = (u64)(unsigned long)READ_ONCE(task->clear_child_tid);
	out->sas_ss_sp = READ_ONCE(task->sas_ss_sp);
	out->sas_ss_size = READ_ONCE(task->sas_ss_size);
	out->sas_ss_flags = READ_ONCE(task->sas_ss_flags);
	out->personality = READ_ONCE(task->personality);
}

/*
 * The body of __lock_task_sighand(), which is not exported: @task's sighand, its siglock
 * taken (released by the caller with spin_unlock_irqrestore(&sighand->siglock, *flags)), or
 * NULL once the task has exited.
 */
static struct sighand_struct *lock_sighand(struct task_struct *task, unsigned long *flags)
{
	struct sighand_struct *sighand;

	rcu_read_lock();
	for (;;) {
		sighand = rcu_dereference(task->sighand);
		if (!sighand)
			break;
		spin_lock_irqsave(&sighand->siglock, *flags);
		if (likely(sighand == rcu_access_pointer(task->sighand)))
			break;
		spin_unlock_irqrestore(&sighand->siglock, *flags);
	}
	rcu_read_unlock();
	return sighand;
}

int ckpt_helper_get_sigactions(struct task_struct *task, struct ckpt_sigaction *out, u32 count)
{
	struct sighand_struct *sighand;
	unsigned long flags;
	u32 i;

	if (count > _NSIG)
		return -EINVAL;
	sighand = lock_sighand(task, &flags);
	if (!sighand)
		return -ESRCH;
	for (i = 0; i < count; i++) {
		const struct sigaction *sa = &sighand->action[i].sa;

		out[i].handler = (u64)(unsigned long)sa->sa_handler;
		out[i].flags = sa->sa_flags;
		out[i].restorer = (u64)(unsigned long)sa->sa_restorer;
		out[i].mask = sa->sa_mask.sig[0];
	}
	spin_unlock_irqrestore(&sighand->siglock, flags);
	return 0;
}

/*
 * Which itimers of @task's process are set (bit ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF), or
 * -ESRCH once it has exited: what do_getitimer() (kernel/time/itimer.c) reads, under the same
 * lock. A periodic ITIMER_REAL that has fired is armed again only when its SIGALRM is
 * dequeued (dequeue_signal()): until then its hrtimer is not active but its interval is set,
 * and it counts as set. hrtimer_active() is an inline.
 */
int ckpt_helper_itimers_armed(struct task_struct *task)
{
	struct sighand_struct *sighand;
	struct signal_struct *sig = task->signal;
	unsigned long flags;
	int armed = 0;

	sighand = lock_sighand(task, &flags);
	if (!sighand)
		return -ESRCH;
	if (hrtimer_active(&sig->real_timer) || sig->it_real_incr)
		armed |= 1 << ITIMER_REAL;
	if (sig->it[CPUCLOCK_VIRT].expires)
		armed |= 1 << ITIMER_VIRTUAL;
	if (sig->it[CPUCLOCK_PROF].expires)
		armed |= 1 << ITIMER_PROF;
	spin_unlock_irqrestore(&sighand->siglock, flags);
	return armed;
}

s64 ckpt_helper_file_size(struct file *file)
{
	return i_size_read(file_inode(file));
}

/*
 * Feeds one page (pinned by get_user_pages_remote()) to the running XXH64 at @hash (if not
 * NULL), unless @skip_zero and it is all zero (kmap_local_page and memchr_inv are inlines). Returns true if
 * it is to be written, false if skipped. The caller writes the pages it keeps in one call and
 * drops their references.
 */
bool ckpt_helper_hash_page(struct page *page, bool skip_zero, void *hash)
{
	void *kaddr;
	bool keep;

	if (!skip_zero && !hash)
		return true;
	kaddr = kmap_local_page(page);
	keep = !skip_zero || memchr_inv(kaddr, 0, PAGE_SIZE);
	/* Checksummed while mapped and hot (unless user space checksums the section: NULL). */
	if (keep && hash)
		ckpt_rust_hash_page(hash, kaddr);
	kunmap_local(kaddr);
	return keep;
}

/* fatal_signal_pending(): an inline the Rust bindings lack. */
bool ckpt_helper_fatal_signal_pending(struct task_struct *task)
{
	return fatal_signal_pending(task);
}

void ckpt_helper_put_page(struct page *page)
{
	put_page(page);
}

/*
 * Whether @file is a regular file open for reading (@read) and/or writing (@write). A file
 * to write must not be O_APPEND: kernel_write() would put each page at the end of the file,
 * not at the position DUMP_PAGES records for it (found by tools/fuzz-ioctl).
 */
bool ckpt_helper_file_can(struct file *file, bool read, bool write)
{
	if (!S_ISREG(file_inode(file)->i_mode))
		return false;
	if (read && !((file->f_mode & FMODE_READ) && (file->f_mode & FMODE_CAN_READ)))
		return false;
	if (write && !((file->f_mode & FMODE_WRITE) && (file->f_mode & FMODE_CAN_WRITE)))
		return false;
	if (write && (READ_ONCE(file->f_flags) & O_APPEND))
		return false;
	return true;
}
