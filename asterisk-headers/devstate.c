/*
 * Device state for res_scale (src/ast/devstate.rs): the subscription that reports every state
 * that changed on this node, and the calls that put other nodes' states into Asterisk under
 * their entity IDs, take them back, and read a device's aggregate.
 *
 * Why this is C: stasis_subscribe is a macro, ast_eid_default a packed global, and the state
 * message a struct whose layout is Asterisk's business; Rust only sees strings.
 */
#define AST_MODULE "res_scale"
#define AST_MODULE_SELF_SYM __internal_res_scale_self

#include "asterisk.h"
#include "asterisk/devicestate.h"
#include "asterisk/stasis.h"
#include "asterisk/utils.h"

#include "shim.h"

/* Implemented in Rust: this node's own state of a device changed. */
void rs_scale_device_state_changed(const char *device, const char *state, int cachable);
/* Implemented in Rust: this node's own state of a device, as Asterisk holds it now. */
void rs_scale_device_state_held(const char *device, const char *state, int cachable);

static struct stasis_subscription *subscription;

static void on_device_state(void *data, struct stasis_subscription *sub, struct stasis_message *msg)
{
	struct ast_device_state_message *change;

	(void) data;
	(void) sub;
	if (stasis_message_type(msg) != ast_device_state_message_type()) {
		return;
	}
	change = stasis_message_data(msg);
	/*
	 * Only this node's own per-EID states: aggregates (no EID) are Asterisk's sum of every
	 * node, and states with another EID came from the pool (sending them on would echo).
	 */
	if (!change->eid || ast_eid_cmp(&ast_eid_default, change->eid)) {
		return;
	}
	rs_scale_device_state_changed(change->device, ast_devstate_str(change->state),
		change->cachable == AST_DEVSTATE_CACHABLE);
}

void res_scale_devstate_report_local(void)
{
	struct ao2_container *held;
	struct ao2_iterator i;
	struct stasis_message *msg;

	/* Only cachable states are cached: non-cachable ones are over when they happened. */
	held = stasis_cache_dump_by_eid(ast_device_state_cache(), ast_device_state_message_type(), &ast_eid_default);
	if (!held) {
		return;
	}
	i = ao2_iterator_init(held, 0);
	while ((msg = ao2_iterator_next(&i))) {
		struct ast_device_state_message *s = stasis_message_data(msg);

		if (s->eid && !ast_eid_cmp(&ast_eid_default, s->eid)) {
			rs_scale_device_state_held(s->device, ast_devstate_str(s->state), s->cachable == AST_DEVSTATE_CACHABLE);
		}
		ao2_ref(msg, -1);
	}
	ao2_iterator_destroy(&i);
	ao2_ref(held, -1);
}

int res_scale_devstate_subscribe(void)
{
	if (subscription) {
		return 0;
	}
	subscription = stasis_subscribe(ast_device_state_topic_all(), on_device_state, NULL);
	if (!subscription) {
		return -1;
	}
	/* The change type too: without it the final message never comes and join would wait. */
	if (stasis_subscription_accept_message_type(subscription, ast_device_state_message_type())
		|| stasis_subscription_accept_message_type(subscription, stasis_subscription_change_type())
		|| stasis_subscription_set_filter(subscription, STASIS_SUBSCRIPTION_FILTER_SELECTIVE)) {
		subscription = stasis_unsubscribe_and_join(subscription);
		return -1;
	}
	return 0;
}

void res_scale_devstate_unsubscribe(void)
{
	subscription = stasis_unsubscribe_and_join(subscription);
}

int res_scale_state_origin_eid(const char *origin, struct ast_eid *eid)
{
	/* Never this node's EID: it would overwrite (or delete) this node's own state. */
	return ast_str_to_eid(eid, origin) || !ast_eid_cmp(eid, &ast_eid_default) ? -1 : 0;
}

int res_scale_devstate_apply(const char *device, const char *state, int cachable, const char *origin)
{
	struct ast_eid eid;

	if (res_scale_state_origin_eid(origin, &eid)) {
		return -1;
	}
	return ast_publish_device_state_full(device, ast_devstate_val(state),
		cachable ? AST_DEVSTATE_CACHABLE : AST_DEVSTATE_NOT_CACHABLE, &eid);
}

void res_scale_devstate_forget(const char *device, const char *origin)
{
	struct ast_eid eid;
	struct stasis_message *cached;

	if (res_scale_state_origin_eid(origin, &eid)) {
		return;
	}
	/*
	 * Clearing a device's last snapshot publishes no new aggregate, so hints would keep the
	 * old state. First the origin's state becomes UNKNOWN, which weighs least in the
	 * aggregate: Asterisk publishes the aggregate of what is left.
	 */
	ast_publish_device_state_full(device, AST_DEVICE_UNKNOWN, AST_DEVSTATE_CACHABLE, &eid);
	cached = stasis_cache_get_by_eid(ast_device_state_cache(), ast_device_state_message_type(), device, &eid);
	if (cached) {
		struct stasis_message *clear = stasis_cache_clear_create(cached);

		if (clear) {
			/* Through the device's topic, as the state above, so that it comes after it. */
			stasis_publish(ast_device_state_topic(device), clear);
			ao2_ref(clear, -1);
		}
		ao2_ref(cached, -1);
	}
	/* And this node works its own state out again, for a device it never published. */
	ast_devstate_changed_literal(AST_DEVICE_UNKNOWN, AST_DEVSTATE_CACHABLE, device);
}

const char *res_scale_devstate_aggregate(const char *device)
{
	return ast_devstate_str(ast_device_state(device));
}
