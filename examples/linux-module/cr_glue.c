// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * coresident_ring_test: the coresident ring inside a Linux kernel module.
 *
 * Thin C glue around rustlib/ (a no_std Rust staticlib over coresident-ring):
 * this file provides memory, two kernel threads, waits, wake-ups and printk;
 * every ring operation (layout, send, receive, checksums, the event-index
 * arm/notify decisions) is the Rust library's. At load, a producer thread
 * sends `messages` messages of random sizes with checksums through one ring
 * to a consumer thread, which verifies each; the module then logs one line,
 *   coresident_ring_test: PASS ...   or   coresident_ring_test: FAIL ...
 * and insmod fails (-EIO) on FAIL.
 *
 * License: the project's code, this file included, is MIT OR Apache-2.0. The
 * module declares "Dual MIT/GPL" because the kernel wants a GPL-compatible
 * license string for a module to load untainted and to use GPL-only exports;
 * that does not change the license of the sources.
 */
#include <linux/atomic.h>
#include <linux/completion.h>
#include <linux/err.h>
#include <linux/jiffies.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/math64.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/wait.h>

static unsigned int messages = 100000;
module_param(messages, uint, 0444);
MODULE_PARM_DESC(messages, "messages to move through the ring (default 100000)");
static unsigned int data_size = 8192;
module_param(data_size, uint, 0444);
MODULE_PARM_DESC(data_size, "ring data area in bytes, a power of two (default 8192)");
static ulong seed = 0x5eed2026;
module_param(seed, ulong, 0444);
MODULE_PARM_DESC(seed, "PRNG seed of sizes and payloads");
static unsigned int wait_ms = 2000;
module_param(wait_ms, uint, 0444);
MODULE_PARM_DESC(wait_ms, "a wait's timeout; one that ends with the ring ready is a lost wake-up");

/* rustlib's C ABI (rustlib/src/lib.rs). */
struct cr_stats {
	u64 messages, bytes, doorbells, sleeps, timeouts, stalls;
	int error;
	u32 error_seq;
};
size_t cr_region_size(u32 data_size);
int cr_init(void *mem, size_t len, u32 data_size);
int cr_producer_run(void *ctx, void *mem, size_t len, u32 count, u64 seed,
		    struct cr_stats *stats);
int cr_consumer_run(void *ctx, void *mem, size_t len, u32 count, u64 seed,
		    struct cr_stats *stats);
const char *cr_strerror(int code);

enum { SIDE_CONSUMER = 0, SIDE_PRODUCER = 1 };

struct cr_doorbell {
	wait_queue_head_t wq;
	atomic_t rung;
};

struct cr_test {
	struct cr_doorbell bell[2];
	void *mem;
	size_t len;
	struct cr_stats stats[2];
	struct completion done[2];
};

/* Called from Rust: sleep until `side`'s doorbell rings. 1 rung, 0 timeout,
 * -1 signal. */
int cr_wait(void *ctx, u32 side)
{
	struct cr_doorbell *b = &((struct cr_test *)ctx)->bell[side & 1];
	long r = wait_event_interruptible_timeout(b->wq, atomic_xchg(&b->rung, 0),
						  msecs_to_jiffies(wait_ms));

	return r < 0 ? -1 : r > 0;
}

/* Called from Rust: ring `side`'s doorbell. */
void cr_wake(void *ctx, u32 side)
{
	struct cr_doorbell *b = &((struct cr_test *)ctx)->bell[side & 1];

	atomic_set(&b->rung, 1);
	wake_up(&b->wq);
}

/* Called from Rust's panic handler, which no normal path reaches. */
void __noreturn cr_panic(const char *msg)
{
	pr_emerg("%s\n", msg);
	BUG();
}

static int cr_consumer_thread(void *arg)
{
	struct cr_test *t = arg;

	cr_consumer_run(t, t->mem, t->len, messages, seed, &t->stats[SIDE_CONSUMER]);
	kthread_complete_and_exit(&t->done[SIDE_CONSUMER], 0);
}

static int cr_producer_thread(void *arg)
{
	struct cr_test *t = arg;

	cr_producer_run(t, t->mem, t->len, messages, seed, &t->stats[SIDE_PRODUCER]);
	kthread_complete_and_exit(&t->done[SIDE_PRODUCER], 0);
}

static int cr_report(struct cr_test *t, s64 us)
{
	struct cr_stats *c = &t->stats[SIDE_CONSUMER], *p = &t->stats[SIDE_PRODUCER];
	u64 bells = c->doorbells + p->doorbells;
	u64 per_k = messages ? div_u64(bells * 1000, messages) : 0;
	u64 rate = us > 0 ? div64_u64(c->messages * 1000000, us) : 0;

	pr_info("coresident_ring_test: producer: %llu sent, %llu bytes, %llu doorbells, %llu sleeps, %llu timeouts\n",
		p->messages, p->bytes, p->doorbells, p->sleeps, p->timeouts);
	pr_info("coresident_ring_test: consumer: %llu verified, %llu bytes, %llu doorbells, %llu sleeps, %llu timeouts\n",
		c->messages, c->bytes, c->doorbells, c->sleeps, c->timeouts);
	if (p->error || c->error || c->messages != messages || p->messages != messages) {
		pr_err("coresident_ring_test: FAIL producer: %s (message %u); consumer: %s (message %u); %llu of %u verified\n",
		       cr_strerror(p->error), p->error_seq, cr_strerror(c->error),
		       c->error_seq, c->messages, messages);
		return -EIO;
	}
	pr_info("coresident_ring_test: PASS %u messages (%llu bytes, random sizes, checksummed) in %lld ms (%llu msg/s), data area %u B; doorbells %llu = %llu.%03llu per message (to consumer %llu, to producer %llu); lost wake-ups 0\n",
		messages, c->bytes, div_s64(us, 1000), rate, data_size, bells,
		div_u64(per_k, 1000), per_k % 1000, p->doorbells, c->doorbells);
	return 0;
}

static int __init cr_test_init(void)
{
	struct task_struct *th[2];
	struct cr_test *t;
	ktime_t start;
	int i, rc;

	t = kzalloc(sizeof(*t), GFP_KERNEL);
	if (!t)
		return -ENOMEM;
	t->len = cr_region_size(data_size);
	if (!t->len) {
		pr_err("coresident_ring_test: FAIL bad data_size %u\n", data_size);
		rc = -EINVAL;
		goto out;
	}
	/* vzalloc is page-aligned, more than the ring's 128. */
	t->mem = vzalloc(t->len);
	if (!t->mem || !IS_ALIGNED((unsigned long)t->mem, 128)) {
		pr_err("coresident_ring_test: FAIL no aligned memory\n");
		rc = -ENOMEM;
		goto out;
	}
	rc = cr_init(t->mem, t->len, data_size);
	if (rc) {
		pr_err("coresident_ring_test: FAIL cr_init: %s\n", cr_strerror(-rc));
		rc = -EINVAL;
		goto out;
	}
	for (i = 0; i < 2; i++) {
		init_waitqueue_head(&t->bell[i].wq);
		atomic_set(&t->bell[i].rung, 0);
		init_completion(&t->done[i]);
	}
	/* Create both, then start both: a thread that cannot be created leaves
	 * none running. */
	th[SIDE_CONSUMER] = kthread_create(cr_consumer_thread, t, "cr_consumer");
	th[SIDE_PRODUCER] = kthread_create(cr_producer_thread, t, "cr_producer");
	if (IS_ERR(th[0]) || IS_ERR(th[1])) {
		for (i = 0; i < 2; i++)
			if (!IS_ERR(th[i]))
				kthread_stop(th[i]);
		pr_err("coresident_ring_test: FAIL kthread_create\n");
		rc = -ENOMEM;
		goto out;
	}
	start = ktime_get();
	wake_up_process(th[SIDE_CONSUMER]);
	wake_up_process(th[SIDE_PRODUCER]);
	/* Each side gives up after 15 waits without progress, so both end. */
	wait_for_completion(&t->done[SIDE_CONSUMER]);
	wait_for_completion(&t->done[SIDE_PRODUCER]);
	rc = cr_report(t, ktime_us_delta(ktime_get(), start));
out:
	vfree(t->mem);
	kfree(t);
	return rc;
}

static void __exit cr_test_exit(void)
{
}

module_init(cr_test_init);
module_exit(cr_test_exit);
MODULE_DESCRIPTION("coresident: the ring (Rust, no_std) moving messages between two kernel threads");
MODULE_AUTHOR("coresident");
MODULE_LICENSE("Dual MIT/GPL");
