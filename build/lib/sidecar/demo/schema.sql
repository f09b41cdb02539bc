-- A small "legacy" application schema, as an existing app would have it: serial keys,
-- timestamps maintained by the app, a table the sidecar does not sync (users).
CREATE TABLE users (
    id          serial PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    owner_id    integer NOT NULL REFERENCES users (id),
    is_public   boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE todo_items (
    id          serial PRIMARY KEY,
    project_id  integer REFERENCES projects (id),
    title       text NOT NULL,
    done        boolean NOT NULL DEFAULT false,
    owner_id    integer NOT NULL REFERENCES users (id),
    notes       text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO users (email, full_name) VALUES
    ('ada@example.com', 'Ada Lovelace'),
    ('alan@example.com', 'Alan Turing');

INSERT INTO projects (name, owner_id, is_public) VALUES
    ('Analytical Engine', 1, true),
    ('Private notes', 1, false),
    ('Bombe', 2, false);

INSERT INTO todo_items (project_id, title, done, owner_id, notes) VALUES
    (1, 'Write the first program', true, 1, 'Bernoulli numbers'),
    (1, 'Publish the notes', false, 1, NULL),
    (2, 'Buy more punch cards', false, 1, NULL),
    (3, 'Break Enigma', false, 2, 'daily keys'),
    (3, 'Design the Bombe', true, 2, NULL);
