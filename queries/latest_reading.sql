-- The latest reading of every device (its newest timestamp; ties go to the latest arrival).
-- tables: readings
-- param: device VARCHAR = NULL    -- NULL: every device
WITH params AS (
    SELECT CAST(? AS VARCHAR) AS device
),
ranked AS (
    SELECT r.*,
           row_number() OVER (
               PARTITION BY r.device_id ORDER BY r."timestamp" DESC, r.received_at DESC NULLS LAST
           ) AS position
    FROM readings AS r, params AS p
    WHERE p.device IS NULL OR r.device_id = p.device
)
SELECT device_id, "timestamp", ozone, particulate_matter, carbon_monoxide, sulfur_dioxide, nitrogen_dioxide,
       latitude, longitude, received_at, source
FROM ranked
WHERE position = 1
ORDER BY device_id
