/*
 * Dead letters (see deadletter.h).
 */
#include "common/deadletter.h"
#include "common/json_scan.h"
#include "common/timeutil.h"

#include <stdbool.h>
#include <string.h>

rd_kafka_headers_t *sl_dead_letter_format(const sl_dead_letter_t *dl, sl_buf_t *b)
{
    char now[SL_TIME_STRLEN];
    sl_time_format_ms(sl_time_now_ms(), now);
    sl_buf_puts(b, "{\"failedAt\":");
    sl_buf_json_str(b, now, strlen(now));
    sl_buf_puts(b, ",\"stage\":");
    sl_buf_json_str(b, dl->stage, strlen(dl->stage));
    sl_buf_puts(b, ",\"reason\":");
    sl_buf_json_str(b, dl->reason, strlen(dl->reason));
    const char *fields[][2] = {{"sourceId", dl->source_id},
                               {"destinationId", dl->destination_id},
                               {"destinationType", dl->destination_type},
                               {"messageId", dl->message_id},
                               {"receivedAt", dl->received_at}};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (!fields[i][1])
            continue;
        sl_buf_printf(b, ",\"%s\":", fields[i][0]);
        sl_buf_json_str(b, fields[i][1], strlen(fields[i][1]));
    }
    sl_buf_printf(b, ",\"eventPartition\":%d,\"eventOffset\":%lld,\"event\":", (int)dl->partition,
                  (long long)dl->offset);
    const char *ev = dl->event ? dl->event : "";
    sl_json_span_t doc;
    sl_json_error_t jerr;
    bool json = dl->event_as == SL_DL_EVENT_JSON;
    if (dl->event_as == SL_DL_EVENT_SCAN)
        json = dl->event_len && sl_json_scan_document(ev, dl->event_len, &doc, &jerr);
    if (json)
        sl_buf_append(b, ev, dl->event_len);
    else
        sl_buf_json_str(b, ev, dl->event_len);
    sl_buf_putc(b, '}');

    rd_kafka_headers_t *h = rd_kafka_headers_new(4);
    rd_kafka_header_add(h, SL_HDR_FAILED_STAGE, -1, dl->stage, -1);
    if (dl->source_id)
        rd_kafka_header_add(h, SL_HDR_SOURCE_ID, -1, dl->source_id, -1);
    if (dl->destination_id)
        rd_kafka_header_add(h, SL_HDR_DESTINATION_ID, -1, dl->destination_id, -1);
    if (dl->message_id)
        rd_kafka_header_add(h, SL_HDR_MESSAGE_ID, -1, dl->message_id, -1);
    return h;
}
