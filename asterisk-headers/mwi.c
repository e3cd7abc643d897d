/*
 * Mailbox (MWI) state for res_scale (src/ast/mwi.rs): the subscription that reports every
 * mailbox state that changed on this node, and the calls that put other nodes' states into
 * Asterisk under their entity IDs, take them back, and read what Asterisk holds.
 *
 * Why this is C: stasis_subscribe is a macro, ast_eid_default a packed global, and
 * struct ast_mwi_state has string fields whose layout is Asterisk's business.
 *
 * Asterisk keeps ONE state per mailbox (the last one published wins; nothing is aggregated),
 * and as far as Stasis is concerned every MWI message is local: the node a state came from is
 * only known by the EID inside the state (mwi_state->eid), never by stasis_message_eid().
 * Mailboxes are named by their unique id, "mailbox@context".
 */
#define AST_MODULE "res_scale"
#define AST_MODULE_SELF_SYM __internal_res_scale_self

#include "asterisk.h"
#include "asterisk/mwi.h"
#include "asterisk/stasis.h"
#include "asterisk/utils.h"

#include "shim.h"

/* Implemented in Rust: this node's own state of a mailbox changed, or was deleted. */
void rs_scale_mwi_changed(const char *mailbox, int new_msgs, int old_msgs, int deleted);
/* Implemented in Rust: a state of this node's own that Asterisk holds (res_scale_mwi_report_local). */
void rs_scale_mwi_held(const char *mailbox, int new_msgs, int old_msgs);

static struct stasis_subscription *subscription;

static void on_mwi(void *data, struct stasis_subscription *sub, struct stasis_message *msg)
{
	struct stasis_message *state_msg = msg;
	struct ast_mwi_state *state;
	int deleted = 0;

	(void) data;
	(void) sub;
	/* A deletion is a cache clear that carries the state being deleted. */
	if (stasis_message_type(msg) == stasis_cache_clear_type()) {
		state_msg = stasis_message_data(msg);
		deleted = 1;
	}
	if (!state_msg || stasis_message_type(state_msg) != ast_mwi_state_type()) {
		return;
	}
	state = stasis_message_data(state_msg);
	/* Only this node's own states: those with another EID came from the pool (sending them
	 * on would echo). */
	if (ast_eid_cmp(&ast_eid_default, &state->eid)) {
		return;
	}
	rs_scale_mwi_changed(state->uniqueid, state->new_msgs, state->old_msgs, deleted);
}

void res_scale_mwi_report_local(void)
{
	struct ao2_container *held;
	struct ao2_iterator i;
	struct stasis_message *msg;

	/* Every MWI message is local to Stasis: the origin is the EID inside the state. */
	held = stasis_cache_dump(ast_mwi_state_cache(), ast_mwi_state_type());
	if (!held) {
		return;
	}
	i = ao2_iterator_init(held, 0);
	while ((msg = ao2_iterator_next(&i))) {
		struct ast_mwi_state *state = stasis_message_data(msg);

		if (!ast_eid_cmp(&ast_eid_default, &state->eid)) {
			rs_scale_mwi_held(state->uniqueid, state->new_msgs, state->old_msgs);
		}
		ao2_ref(msg, -1);
	}
	ao2_iterator_destroy(&i);
	ao2_ref(held, -1);
}

int res_scale_mwi_subscribe(void)
{
	if (subscription) {
		return 0;
	}
	subscription = stasis_subscribe(ast_mwi_topic_all(), on_mwi, NULL);
	if (!subscription) {
		return -1;
	}
	/* The change type too: without it the final message never comes and join would wait. */
	if (stasis_subscription_accept_message_type(subscription, ast_mwi_state_type())
		|| stasis_subscription_accept_message_type(subscription, stasis_cache_clear_type())
		|| stasis_subscription_accept_message_type(subscription, stasis_subscription_change_type())
		|| stasis_subscription_set_filter(subscription, STASIS_SUBSCRIPTION_FILTER_SELECTIVE)) {
		subscription = stasis_unsubscribe_and_join(subscription);
		return -1;
	}
	return 0;
}

void res_scale_mwi_unsubscribe(void)
{
	subscription = stasis_unsubscribe_and_join(subscription);
}

/* Splits "mailbox@context" at its first '@' into `buf` (context NULL without one), as
 * Asterisk's _full functions take it; they join the two again into the same unique id. */
static const char *split_mailbox(const char *uniqueid, char *buf, size_t size, const char **context)
{
	char *at;

	ast_copy_string(buf, uniqueid, size);
	at = strchr(buf, '@');
	*context = NULL;
	if (at) {
		*at = '\0';
		*context = at + 1;
	}
	return buf;
}

int res_scale_mwi_apply(const char *uniqueid, int new_msgs, int old_msgs, const char *origin)
{
	struct ast_eid eid;
	char buf[256];
	const char *context;
	const char *mailbox = split_mailbox(uniqueid, buf, sizeof(buf), &context);

	if (res_scale_state_origin_eid(origin, &eid) || ast_strlen_zero(mailbox)) {
		return -1;
	}
	return ast_publish_mwi_state_full(mailbox, context, new_msgs, old_msgs, NULL, &eid);
}

/* The state Asterisk's cache holds for the mailbox (a reference), or NULL. */
static struct ast_mwi_state *cached_state(const char *uniqueid, struct stasis_message **msg)
{
	*msg = stasis_cache_get(ast_mwi_state_cache(), ast_mwi_state_type(), uniqueid);
	return *msg ? stasis_message_data(*msg) : NULL;
}

int res_scale_mwi_forget(const char *uniqueid, const char *origin)
{
	struct ast_eid eid;
	struct stasis_message *msg;
	struct ast_mwi_state *state;
	char buf[256];
	const char *context;
	const char *mailbox = split_mailbox(uniqueid, buf, sizeof(buf), &context);
	int holds;

	if (res_scale_state_origin_eid(origin, &eid) || ast_strlen_zero(mailbox)) {
		return -1;
	}
	state = cached_state(uniqueid, &msg);
	holds = state && !ast_eid_cmp(&state->eid, &eid);
	ao2_cleanup(msg);
	/* A later state of this node or of another origin is the mailbox's state now: keep it. */
	if (!holds) {
		return 0;
	}
	/*
	 * Deleting clears the cache, but phones are not told (MWI subscribers only hear states),
	 * and what a new subscription reads stays the last state published. So first "no
	 * messages" under the origin's EID, which phones hear and later subscriptions read.
	 */
	ast_publish_mwi_state_full(mailbox, context, 0, 0, NULL, &eid);
	ast_delete_mwi_state_full(mailbox, context, &eid);
	return 1;
}

int res_scale_mwi_cached(const char *uniqueid, int *new_msgs, int *old_msgs, char *origin, size_t origin_size)
{
	struct stasis_message *msg;
	struct ast_mwi_state *state = cached_state(uniqueid, &msg);

	if (!state) {
		return -1;
	}
	*new_msgs = state->new_msgs;
	*old_msgs = state->old_msgs;
	ast_eid_to_str(origin, origin_size, &state->eid);
	ao2_ref(msg, -1);
	return 0;
}
