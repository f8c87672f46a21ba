-- telemaint-server schema version 1 (sqlite), frozen: never edit. test_migrations.py loads it
-- to check that migrations 2.. turn a version-1 database into the current schema.

CREATE TABLE schema_version (
	version INTEGER NOT NULL,
	description VARCHAR(200) NOT NULL,
	applied_at DATETIME NOT NULL,
	PRIMARY KEY (version)
);

CREATE TABLE audit_log (
	id INTEGER NOT NULL,
	at DATETIME NOT NULL,
	actor VARCHAR(200) NOT NULL,
	action VARCHAR(64) NOT NULL,
	target VARCHAR(255) NOT NULL,
	details JSON NOT NULL,
	address VARCHAR(64),
	CONSTRAINT pk_audit_log PRIMARY KEY (id)
);

CREATE INDEX ix_audit_log_action ON audit_log (action);

CREATE INDEX ix_audit_log_at ON audit_log (at);

CREATE TABLE customers (
	id INTEGER NOT NULL,
	name VARCHAR(200) NOT NULL,
	created_at DATETIME NOT NULL,
	CONSTRAINT pk_customers PRIMARY KEY (id),
	CONSTRAINT uq_customers_name UNIQUE (name)
);

CREATE TABLE devices (
	id INTEGER NOT NULL,
	name VARCHAR(200) NOT NULL,
	serial VARCHAR(128) NOT NULL,
	model VARCHAR(200) NOT NULL,
	customer_id INTEGER,
	agent_version VARCHAR(64),
	enrolled_at DATETIME NOT NULL,
	last_seen_at DATETIME,
	report_interval_s INTEGER NOT NULL,
	token_hash VARCHAR(64) NOT NULL,
	ssh_public_key VARCHAR(200) NOT NULL,
	CONSTRAINT pk_devices PRIMARY KEY (id),
	CONSTRAINT uq_devices_serial UNIQUE (serial),
	CONSTRAINT fk_devices_customer_id_customers FOREIGN KEY(customer_id) REFERENCES customers (id),
	CONSTRAINT uq_devices_token_hash UNIQUE (token_hash)
);

CREATE INDEX ix_devices_customer_id ON devices (customer_id);

CREATE TABLE users (
	id INTEGER NOT NULL,
	name VARCHAR(200) NOT NULL,
	role VARCHAR(16) NOT NULL,
	customer_id INTEGER,
	password_hash VARCHAR(255) NOT NULL,
	created_at DATETIME NOT NULL,
	CONSTRAINT pk_users PRIMARY KEY (id),
	CONSTRAINT uq_users_name UNIQUE (name),
	CONSTRAINT fk_users_customer_id_customers FOREIGN KEY(customer_id) REFERENCES customers (id)
);

CREATE TABLE api_tokens (
	id INTEGER NOT NULL,
	user_id INTEGER NOT NULL,
	name VARCHAR(200) NOT NULL,
	token_hash VARCHAR(64) NOT NULL,
	created_at DATETIME NOT NULL,
	last_used_at DATETIME,
	CONSTRAINT pk_api_tokens PRIMARY KEY (id),
	CONSTRAINT fk_api_tokens_user_id_users FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE,
	CONSTRAINT uq_api_tokens_token_hash UNIQUE (token_hash)
);

CREATE INDEX ix_api_tokens_user_id ON api_tokens (user_id);

CREATE TABLE commands (
	id INTEGER NOT NULL,
	device_id INTEGER NOT NULL,
	kind VARCHAR(32) NOT NULL,
	args JSON NOT NULL,
	status VARCHAR(16) NOT NULL,
	created_by VARCHAR(200) NOT NULL,
	created_at DATETIME NOT NULL,
	sent_at DATETIME,
	finished_at DATETIME,
	message TEXT,
	result JSON,
	CONSTRAINT pk_commands PRIMARY KEY (id),
	CONSTRAINT fk_commands_device_id_devices FOREIGN KEY(device_id) REFERENCES devices (id) ON DELETE CASCADE
);

CREATE INDEX ix_commands_device_status ON commands (device_id, status);

CREATE TABLE device_state (
	device_id INTEGER NOT NULL,
	inventory JSON,
	inventory_at DATETIME,
	versions JSON,
	health JSON,
	health_at DATETIME,
	health_status VARCHAR(16),
	CONSTRAINT pk_device_state PRIMARY KEY (device_id),
	CONSTRAINT fk_device_state_device_id_devices FOREIGN KEY(device_id) REFERENCES devices (id) ON DELETE CASCADE
);

CREATE INDEX ix_device_state_health_status ON device_state (health_status);

CREATE TABLE enrollment_codes (
	id INTEGER NOT NULL,
	code_hash VARCHAR(64) NOT NULL,
	customer_id INTEGER,
	created_by VARCHAR(200) NOT NULL,
	created_at DATETIME NOT NULL,
	expires_at DATETIME NOT NULL,
	used_at DATETIME,
	device_id INTEGER,
	CONSTRAINT pk_enrollment_codes PRIMARY KEY (id),
	CONSTRAINT uq_enrollment_codes_code_hash UNIQUE (code_hash),
	CONSTRAINT fk_enrollment_codes_customer_id_customers FOREIGN KEY(customer_id) REFERENCES customers (id),
	CONSTRAINT fk_enrollment_codes_device_id_devices FOREIGN KEY(device_id) REFERENCES devices (id) ON DELETE SET NULL
);

CREATE TABLE reports (
	id INTEGER NOT NULL,
	uuid CHAR(32) NOT NULL,
	device_id INTEGER NOT NULL,
	kind VARCHAR(16) NOT NULL,
	created_at DATETIME NOT NULL,
	received_at DATETIME NOT NULL,
	payload JSON NOT NULL,
	CONSTRAINT pk_reports PRIMARY KEY (id),
	CONSTRAINT uq_reports_uuid UNIQUE (uuid),
	CONSTRAINT fk_reports_device_id_devices FOREIGN KEY(device_id) REFERENCES devices (id) ON DELETE CASCADE
);

CREATE INDEX ix_reports_device_kind_created ON reports (device_id, kind, created_at);

CREATE TABLE version_history (
	id INTEGER NOT NULL,
	device_id INTEGER NOT NULL,
	"key" VARCHAR(255) NOT NULL,
	old TEXT,
	new TEXT,
	changed_at DATETIME NOT NULL,
	CONSTRAINT pk_version_history PRIMARY KEY (id),
	CONSTRAINT fk_version_history_device_id_devices FOREIGN KEY(device_id) REFERENCES devices (id) ON DELETE CASCADE
);

CREATE INDEX ix_version_history_device_changed ON version_history (device_id, changed_at);
