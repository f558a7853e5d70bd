-- Daily mean, minimum and maximum of every measurement, per device (one row per device, day, measurement).
-- tables: readings
-- param: start_date DATE = 1970-01-01
-- param: end_date DATE = 9999-12-31
-- param: device VARCHAR = NULL    -- NULL: every device
WITH params AS (
    SELECT CAST(? AS DATE) AS start_date, CAST(? AS DATE) AS end_date, CAST(? AS VARCHAR) AS device
),
daily AS (
    -- aggregate the wide rows first (one pass over the readings), then turn the result long: unpivoting
    -- the readings themselves would make five rows of every reading
    -- the day is the hive `date` partition: the Glue job files every reading under its timestamp's UTC
    -- date (date_format(timestamp, 'yyyy-MM-dd')), so filtering and grouping on it gives the same days
    -- while whole dates are pruned and the timestamp column is never read (a fifth less work on DuckDB)
    SELECT r.device_id, CAST(r."date" AS DATE) AS day,
           count(r.ozone) AS o_n, avg(r.ozone) AS o_mean, min(r.ozone) AS o_min, max(r.ozone) AS o_max,
           count(r.particulate_matter) AS pm_n, avg(r.particulate_matter) AS pm_mean,
           min(r.particulate_matter) AS pm_min, max(r.particulate_matter) AS pm_max,
           count(r.carbon_monoxide) AS co_n, avg(r.carbon_monoxide) AS co_mean,
           min(r.carbon_monoxide) AS co_min, max(r.carbon_monoxide) AS co_max,
           count(r.sulfur_dioxide) AS so2_n, avg(r.sulfur_dioxide) AS so2_mean,
           min(r.sulfur_dioxide) AS so2_min, max(r.sulfur_dioxide) AS so2_max,
           count(r.nitrogen_dioxide) AS no2_n, avg(r.nitrogen_dioxide) AS no2_mean,
           min(r.nitrogen_dioxide) AS no2_min, max(r.nitrogen_dioxide) AS no2_max
    FROM readings AS r, params AS p
    WHERE CAST(r."date" AS DATE) BETWEEN p.start_date AND p.end_date
      AND (p.device IS NULL OR r.device_id = p.device)
    GROUP BY r.device_id, CAST(r."date" AS DATE)
),
long AS (
    UNPIVOT daily
    ON (o_n, o_mean, o_min, o_max) AS ozone,
       (pm_n, pm_mean, pm_min, pm_max) AS particulate_matter,
       (co_n, co_mean, co_min, co_max) AS carbon_monoxide,
       (so2_n, so2_mean, so2_min, so2_max) AS sulfur_dioxide,
       (no2_n, no2_mean, no2_min, no2_max) AS nitrogen_dioxide
    INTO NAME measurement VALUE readings, mean, min, max
)
SELECT device_id, day, measurement, readings, mean, min, max
FROM long
WHERE readings > 0
ORDER BY device_id, day, measurement
