-- Stored forecasts against the actuals that arrived since: weighted quantile loss (GluonTS's
-- wQuantileLoss: 2 * sum |(y - q_hat) * (1{y <= q_hat} - q)| / sum |y|) and coverage (the share of
-- actuals at or below the quantile) per forecast series and quantile, and the series' mean_wQuantileLoss.
-- Forecasts are JSON Lines as the serverless batch function and the loop store them: item_id
-- ("device" or "device/measurement"), start, mean, quantiles {"0.1": [...], ...}. Actuals are the lake's
-- readings averaged over the forecast's periods: the contract's period grid (sagemaker_deepar.contract
-- TimeFreq): minutes, hours, days and months counted from 1970-01-01, weeks (a step of whole weeks)
-- from Monday 1970-01-05, so 2H periods start at even hours and W ones on Mondays.
-- tables: readings, forecasts
-- param: step INTERVAL = 1 hour       -- the series' time_freq: H, 5min, 2W, M ... or an interval (1 hour, 7 days)
-- param: target VARCHAR = particulate_matter   -- the measurement of an item_id without "/measurement"
-- param: device VARCHAR = NULL    -- NULL: every device
WITH given AS (
    SELECT CAST(? AS INTERVAL) AS step, CAST(? AS VARCHAR) AS target, CAST(? AS VARCHAR) AS device
),
params AS (
    SELECT step, target, device,
           CASE WHEN datepart('year', step) = 0 AND datepart('month', step) = 0 AND datepart('hour', step) = 0
                     AND datepart('minute', step) = 0 AND datepart('day', step) % 7 = 0
                THEN TIMESTAMP '1970-01-05'  -- weeks run Monday to Sunday
                ELSE TIMESTAMP '1970-01-01' END AS origin
    FROM given
),
series AS (
    SELECT CAST(f.item_id AS VARCHAR) AS item_id,
           split_part(CAST(f.item_id AS VARCHAR), '/', 1) AS device_id,
           coalesce(nullif(split_part(CAST(f.item_id AS VARCHAR), '/', 2), ''), p.target) AS measurement,
           CAST(f."start" AS TIMESTAMP) AS "start",
           to_json(f.quantiles) AS quantiles
    FROM forecasts AS f, params AS p
    WHERE p.device IS NULL OR split_part(CAST(f.item_id AS VARCHAR), '/', 1) = p.device
),
bands AS (
    SELECT s.item_id, s.device_id, s.measurement, s."start", k.quantile_name,
           CAST(json_extract(s.quantiles, '$."' || k.quantile_name || '"') AS DOUBLE[]) AS predicted
    FROM series AS s, unnest(json_keys(s.quantiles)) AS k(quantile_name)
),
points AS (
    SELECT b.item_id, b.device_id, b.measurement, CAST(b.quantile_name AS DOUBLE) AS quantile,
           b."start" + (i.position - 1) * p.step AS period,
           b.predicted[i.position] AS predicted
    FROM bands AS b, params AS p, generate_series(1, len(b.predicted)) AS i(position)
),
long AS (
    UNPIVOT (SELECT device_id, "timestamp", ozone, particulate_matter, carbon_monoxide, sulfur_dioxide,
                    nitrogen_dioxide FROM readings)
    ON ozone, particulate_matter, carbon_monoxide, sulfur_dioxide, nitrogen_dioxide
    INTO NAME measurement VALUE value
),
actuals AS (
    SELECT l.device_id, l.measurement, time_bucket(p.step, l."timestamp", p.origin) AS period,
           avg(l.value) AS actual
    FROM long AS l, params AS p
    WHERE l.device_id IN (SELECT device_id FROM series)
    GROUP BY l.device_id, l.measurement, time_bucket(p.step, l."timestamp", p.origin)
),
scored AS (
    SELECT pt.item_id, pt.quantile, a.actual, pt.predicted
    FROM points AS pt
    JOIN actuals AS a
      ON a.device_id = pt.device_id AND a.measurement = pt.measurement AND a.period = pt.period
),
per_quantile AS (
    SELECT item_id, quantile,
           count(*) AS points,
           2 * sum(abs((actual - predicted) * (CASE WHEN actual <= predicted THEN 1 ELSE 0 END - quantile)))
               / nullif(sum(abs(actual)), 0) AS wQuantileLoss,
           avg(CASE WHEN actual <= predicted THEN 1.0 ELSE 0.0 END) AS coverage
    FROM scored
    GROUP BY item_id, quantile
)
SELECT item_id, quantile, points, wQuantileLoss, coverage,
       avg(wQuantileLoss) OVER (PARTITION BY item_id) AS mean_wQuantileLoss
FROM per_quantile
ORDER BY item_id, quantile
