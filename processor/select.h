/*
 * Destination selection and timestamp correction, as RudderStack does them (see
 * ../shared/REFERENCE.md, "Processor"). Pure functions over a parsed event, so every rule is
 * unit-tested on its own.
 */
#ifndef PR_SELECT_H
#define PR_SELECT_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/timeutil.h"
#include "common/workspace.h"

/*
 * Why the event must not go to destination d, or NULL when it goes. The rules, in order:
 * the destination is enabled; its definition's supportedMessageTypes has the event's type
 * (no list: every type); the event's `integrations` object allows it (by definition name or
 * display name, else "All", default true); no consent category configured on the destination
 * (OneTrust `oneTrustCookieCategories`, Ketch `ketchConsentPurposes`, or the generic
 * `consentManagement`) is in the event's `context.consentManagement.deniedConsentIds`; and for
 * track events the destination's event filter (`eventFilteringOption` with
 * `whitelistedEvents` / `blacklistedEvents`) lets the event name through.
 * The result is a static string naming the rule, e.g. "not in the destination's
 * whitelistedEvents".
 */
const char *pr_select_reason(json_object *ev, const char *type, const sl_destination_t *d);

/*
 * Timestamp correction: if ev has a valid `timestamp`, it is kept (returns false). Otherwise
 * timestamp = receivedAt - (sentAt - originalTimestamp), a missing sentAt or
 * originalTimestamp counting as receivedAt; the result goes to out (RFC 3339, ms, UTC) and
 * the function returns true. received_at is the gateway's receivedAt.
 */
bool pr_timestamp_correct(json_object *ev, const char *received_at, char out[SL_TIME_STRLEN]);

#endif
