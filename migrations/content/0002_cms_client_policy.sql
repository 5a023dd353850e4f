-- The machine client "cms" (role api_service_cms, access "write" on content in both committed
-- stacks) manages its own articles only: the rows whose author is its token's subject. Write
-- access has no DELETE privilege. The policy protects a content table, so it is part of
-- content's history; every stack that has this domain must configure the client (validated
-- per stack by make migrate-validate: the role must exist).
-- Wait at most this long for a lock held by live traffic, and run no statement longer.
SET lock_timeout = '10s';
SET statement_timeout = '60s';

DROP POLICY IF EXISTS articles_cms_own ON content.articles;
CREATE POLICY articles_cms_own ON content.articles
    FOR ALL TO api_service_cms
    USING (author_sub = (SELECT platform.jwt_sub()))
    WITH CHECK (author_sub = (SELECT platform.jwt_sub()));
