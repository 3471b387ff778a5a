-- The canonical orders table of the example (PostgreSQL).
CREATE TABLE IF NOT EXISTS kafka_example_orders (
    order_id       text PRIMARY KEY,
    customer_no    text NOT NULL,
    status         text NOT NULL,
    currency       text NOT NULL,
    total          double precision NOT NULL,
    line_count     integer NOT NULL,
    updated_at     text NOT NULL,
    correlation_id text
);
