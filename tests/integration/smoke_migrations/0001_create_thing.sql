CREATE TABLE smoke_thing (id int PRIMARY KEY);
