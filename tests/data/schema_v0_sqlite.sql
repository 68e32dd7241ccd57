-- Sluice's schema as release fca55db's create_all made it on sqlite (the baseline, migrations/versions/0001).
-- Generated from that release's models (SQLModel.metadata, CreateTable/CreateIndex); a database made by it.

CREATE TABLE dlq_feed_items (
	id INTEGER NOT NULL, 
	run_id VARCHAR(64) NOT NULL, 
	feed TEXT NOT NULL, 
	error_reason TEXT NOT NULL, 
	data TEXT NOT NULL, 
	record_hash VARCHAR(64) NOT NULL, 
	inserted_at DATETIME NOT NULL, 
	last_seen_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (record_hash)
);

CREATE INDEX ix_dlq_feed_items_feed ON dlq_feed_items (feed);
CREATE INDEX ix_dlq_feed_items_run_id ON dlq_feed_items (run_id);

CREATE TABLE dlq_users (
	run_id VARCHAR(64) NOT NULL, 
	source VARCHAR(64) NOT NULL, 
	error_reason TEXT NOT NULL, 
	data TEXT NOT NULL, 
	id INTEGER NOT NULL, 
	record_hash VARCHAR(64) NOT NULL, 
	inserted_at DATETIME NOT NULL, 
	last_seen_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (record_hash)
);

CREATE INDEX ix_dlq_users_run_id ON dlq_users (run_id);

CREATE TABLE etl_checkpoints (
	source VARCHAR(128) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	run_id VARCHAR(64), 
	cursor INTEGER NOT NULL, 
	total INTEGER, 
	staged_path VARCHAR, 
	staged_bytes BIGINT NOT NULL, 
	staged_records INTEGER NOT NULL, 
	fingerprint VARCHAR(256), 
	last_success_at DATETIME, 
	last_failure_at DATETIME, 
	last_error TEXT, 
	updated_at DATETIME, 
	state TEXT NOT NULL, 
	PRIMARY KEY (source)
);


CREATE TABLE etl_runs (
	flow_name VARCHAR(64) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	started_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	duration_seconds FLOAT, 
	extracted INTEGER NOT NULL, 
	valid INTEGER NOT NULL, 
	invalid INTEGER NOT NULL, 
	inserted INTEGER NOT NULL, 
	updated INTEGER NOT NULL, 
	unchanged INTEGER NOT NULL, 
	raw_inserted INTEGER NOT NULL, 
	dlq_inserted INTEGER NOT NULL, 
	delivered_files INTEGER NOT NULL, 
	delivered_bytes BIGINT NOT NULL, 
	failed_stage VARCHAR(32), 
	error TEXT, 
	anomalies TEXT, 
	schema_drift TEXT, 
	id VARCHAR(64) NOT NULL, 
	stage_seconds TEXT NOT NULL, 
	delivered TEXT NOT NULL, 
	files TEXT NOT NULL, 
	dlq_reasons TEXT NOT NULL, 
	sources TEXT NOT NULL, 
	observed_schema TEXT NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_etl_runs_flow_name ON etl_runs (flow_name);
CREATE INDEX ix_etl_runs_status ON etl_runs (status);

CREATE TABLE feed_items (
	feed TEXT NOT NULL, 
	item_key TEXT NOT NULL, 
	guid TEXT, 
	title TEXT, 
	link TEXT, 
	summary TEXT, 
	author TEXT, 
	published_at DATETIME, 
	item_id VARCHAR(64) NOT NULL, 
	categories TEXT NOT NULL, 
	record_hash VARCHAR(64) NOT NULL, 
	first_seen_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	run_id VARCHAR(64) NOT NULL, 
	PRIMARY KEY (item_id)
);

CREATE INDEX ix_feed_items_feed ON feed_items (feed);
CREATE INDEX ix_feed_items_published_at ON feed_items (published_at);
CREATE INDEX ix_feed_items_run_id ON feed_items (run_id);
CREATE INDEX ix_feed_items_updated_at_item_id ON feed_items (updated_at, item_id);

CREATE TABLE processed_users (
	id INTEGER NOT NULL, 
	first_name VARCHAR(200) NOT NULL, 
	last_name VARCHAR(200), 
	maiden_name VARCHAR, 
	username VARCHAR(200), 
	email VARCHAR(320) NOT NULL, 
	phone VARCHAR, 
	age INTEGER NOT NULL, 
	gender VARCHAR(32), 
	birth_date VARCHAR, 
	blood_group VARCHAR, 
	height FLOAT, 
	weight FLOAT, 
	eye_color VARCHAR, 
	university VARCHAR, 
	role VARCHAR, 
	city VARCHAR, 
	state VARCHAR, 
	country VARCHAR, 
	postal_code VARCHAR, 
	latitude FLOAT, 
	longitude FLOAT, 
	department VARCHAR(200) NOT NULL, 
	department_code VARCHAR(32) NOT NULL, 
	company_name VARCHAR, 
	company_title VARCHAR, 
	ssn_masked VARCHAR, 
	card_number_masked VARCHAR, 
	card_type VARCHAR, 
	iban_masked VARCHAR, 
	source VARCHAR(64) NOT NULL, 
	record_hash VARCHAR(64) NOT NULL, 
	source_updated_at DATETIME, 
	first_seen_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	run_id VARCHAR(64) NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_processed_users_age ON processed_users (age);
CREATE INDEX ix_processed_users_department ON processed_users (department);
CREATE INDEX ix_processed_users_department_code ON processed_users (department_code);
CREATE INDEX ix_processed_users_gender ON processed_users (gender);
CREATE INDEX ix_processed_users_last_name ON processed_users (last_name);
CREATE INDEX ix_processed_users_run_id ON processed_users (run_id);
CREATE INDEX ix_processed_users_source ON processed_users (source);
CREATE INDEX ix_processed_users_updated_at_id ON processed_users (updated_at, id);

CREATE TABLE raw_feed_items (
	id INTEGER NOT NULL, 
	run_id VARCHAR(64) NOT NULL, 
	feed TEXT NOT NULL, 
	record_hash VARCHAR(64) NOT NULL, 
	inserted_at DATETIME NOT NULL, 
	data TEXT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (record_hash)
);

CREATE INDEX ix_raw_feed_items_feed ON raw_feed_items (feed);
CREATE INDEX ix_raw_feed_items_run_id ON raw_feed_items (run_id);

CREATE TABLE raw_users (
	id INTEGER NOT NULL, 
	run_id VARCHAR(64) NOT NULL, 
	source VARCHAR(64) NOT NULL, 
	source_id VARCHAR(128), 
	record_hash VARCHAR(64) NOT NULL, 
	inserted_at DATETIME NOT NULL, 
	data TEXT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (record_hash)
);

CREATE INDEX ix_raw_users_run_id ON raw_users (run_id);
CREATE INDEX ix_raw_users_source_id ON raw_users (source_id);

CREATE TABLE schema_drift (
	run_id VARCHAR(64) NOT NULL, 
	source VARCHAR(128) NOT NULL, 
	field VARCHAR(300) NOT NULL, 
	change VARCHAR(16) NOT NULL, 
	old_type VARCHAR(200), 
	new_type VARCHAR(200), 
	policy VARCHAR(16) NOT NULL, 
	detected_at DATETIME NOT NULL, 
	id INTEGER NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_schema_drift_run_id ON schema_drift (run_id);
CREATE INDEX ix_schema_drift_source ON schema_drift (source);

