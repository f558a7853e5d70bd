-- Data quality per device and day: curated readings, gaps between consecutive readings longer than
-- gap_minutes (and the longest one), and the records the Glue job quarantined, by reason.
-- A quarantined record is counted under the device its raw JSON names (device_id, clientid or
-- client_id), else under device 'unknown'; its day is the day of its timestamp, else 'unknown' (NULL).
-- tables: readings, quarantine
-- param: start_date DATE = 1970-01-01
-- param: end_date DATE = 9999-12-31
-- param: device VARCHAR = NULL    -- NULL: every device
-- param: gap_minutes INTEGER = 15
WITH params AS (
    SELECT CAST(? AS DATE) AS start_date, CAST(? AS DATE) AS end_date, CAST(? AS VARCHAR) AS device,
           CAST(? AS INTEGER) AS gap_minutes
),
selected AS (
    SELECT r.device_id, r."timestamp"
    FROM readings AS r, params AS p
    WHERE CAST(r."date" AS DATE) BETWEEN p.start_date AND p.end_date
      AND CAST(r."timestamp" AS DATE) BETWEEN p.start_date AND p.end_date
      AND (p.device IS NULL OR r.device_id = p.device)
),
spaced AS (
    SELECT device_id, CAST("timestamp" AS DATE) AS day,
           date_diff('second', lag("timestamp") OVER (PARTITION BY device_id ORDER BY "timestamp"), "timestamp")
               / 60.0 AS minutes_since_previous
    FROM selected
),
readings_per_day AS (
    SELECT s.device_id, s.day,
           count(*) AS readings,
           count(*) FILTER (WHERE s.minutes_since_previous > p.gap_minutes) AS gaps,
           max(s.minutes_since_previous) AS longest_gap_minutes
    FROM spaced AS s, params AS p
    GROUP BY s.device_id, s.day
),
quarantined AS (
    SELECT coalesce(
               CASE WHEN json_valid(q.raw) THEN coalesce(
                   json_extract_string(q.raw, '$.device_id'),
                   json_extract_string(q.raw, '$.clientid'),
                   json_extract_string(q.raw, '$.client_id')
               ) END,
               'unknown'
           ) AS device_id,
           CAST(q."timestamp" AS DATE) AS day,
           -- the reason's kind: its text before the first detail (a colon, quote, bracket or parenthesis)
           trim(regexp_replace(q.reason, '[:''"(\[].*$', '')) AS reason
    FROM quarantine AS q
),
quarantined_selected AS (
    SELECT q.*
    FROM quarantined AS q, params AS p
    WHERE (p.device IS NULL OR q.device_id = p.device)
      AND (q.day IS NULL OR q.day BETWEEN p.start_date AND p.end_date)
),
reasons AS (
    SELECT device_id, day, reason, count(*) AS records
    FROM quarantined_selected
    GROUP BY device_id, day, reason
),
quarantine_per_day AS (
    SELECT device_id, day,
           sum(records) AS quarantined,
           string_agg(reason || '=' || records, '; ' ORDER BY records DESC, reason) AS quarantined_by_reason
    FROM reasons
    GROUP BY device_id, day
)
SELECT coalesce(r.device_id, q.device_id) AS device_id,
       coalesce(r.day, q.day) AS day,
       coalesce(r.readings, 0) AS readings,
       coalesce(r.gaps, 0) AS gaps,
       r.longest_gap_minutes,
       coalesce(q.quarantined, 0) AS quarantined,
       q.quarantined_by_reason
FROM readings_per_day AS r
FULL OUTER JOIN quarantine_per_day AS q
    ON r.device_id = q.device_id AND r.day IS NOT DISTINCT FROM q.day
ORDER BY device_id, day NULLS LAST
