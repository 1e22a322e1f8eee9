-- Which variant of its wire format a provider speaks (see catalog.proto Provider.dialect).
ALTER TABLE providers ADD COLUMN IF NOT EXISTS dialect text NOT NULL DEFAULT '';
