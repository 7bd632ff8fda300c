DROP FUNCTION securenow_ensure_partitions(TIMESTAMP WITH TIME ZONE);
DROP TABLE safety_scores;
DROP TABLE analytics_events;
